"""URL origins: (scheme, host, port), what Label Studio credentials are bound to.

The token the backend holds for Label Studio is sent only to URLs of the configured
Label Studio's origin (backend/images.py); comparing origins, not URL prefixes, is what
makes `https://ls.example` and `https://ls.example:443/` the same and
`https://ls.example.evil` another.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]  # (scheme, host, port): what credentials are bound to


def origin_of(url: str) -> Origin | None:
    """(scheme, lower-case host, port) of an http(s) URL, the scheme's default port when
    none is given (`https://ls.example` is ('https', 'ls.example', 443)); None for
    anything else (no host, another scheme, a bad port)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else DEFAULT_PORTS[scheme]
