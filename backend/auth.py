"""Secret comparisons for the web guards: constant time, and never an exception.

`hmac.compare_digest` raises TypeError on a `str` with non-ASCII characters, so a
non-ASCII Basic username/password or X-Webhook-Secret was a 500 with a traceback per
request (log flooding), and a non-ASCII configured password locked everyone out. Here
both sides are compared as bytes: the configured secret as UTF-8, a header as the bytes
that came over the wire (WSGI hands them over decoded as latin-1), Basic credentials as
werkzeug decoded them (UTF-8; credentials that are not UTF-8 are no credentials)."""

from __future__ import annotations

import hmac


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def header_bytes(value: str | None) -> bytes:
    """A WSGI header value as the raw bytes the client sent."""
    if not value:
        return b""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:  # not from a WSGI server: take the text as it is
        return _utf8(value)


def same_secret(given: str | bytes | None, expected: str) -> bool:
    """Constant-time equality of a given secret with the configured one; False (never an
    exception) for anything malformed."""
    if given is None:
        given = b""
    given_bytes = given if isinstance(given, bytes) else _utf8(given)
    return hmac.compare_digest(given_bytes, _utf8(expected))


def basic_auth_ok(authorization: object, user: str, password: str) -> bool:
    """werkzeug's `request.authorization` (or None) against the configured pair; both
    compared, so the time does not say which one was wrong."""
    if authorization is None or getattr(authorization, "type", None) != "basic":
        return False
    user_ok = same_secret(getattr(authorization, "username", None) or "", user)
    password_ok = same_secret(getattr(authorization, "password", None) or "", password)
    return user_ok and password_ok


def webhook_secret_ok(header_value: str | None, secret: str) -> bool:
    """The X-Webhook-Secret header (as WSGI gives it) against WEBHOOK_SECRET."""
    return same_secret(header_bytes(header_value), secret)
