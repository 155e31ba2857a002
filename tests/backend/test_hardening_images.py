"""Image fetching, hardened (issue 20, items 4 and 9).

Item 4: Label Studio credentials go to exactly the scheme, host and port of
LABEL_STUDIO_URL (the default port made explicit), and nothing else on that host is
fetched unless IMAGE_ALLOWED_HOSTS lists it. With `LABEL_STUDIO_URL=https://localhost`,
`http://localhost/...` (port 80, clear text) got `Authorization: Token ...`, and
`http://localhost:18099/...` was fetched: the allowlist matched the bare host name and the
credential decision compared `host[:port]` only. Real sockets: stand-in servers record
what reaches them.

Item 9: no image query string (a presigned URL's signature) in an error or a log line."""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from squeezesam.backend.images import Fetcher, ImageError, resolve, safe_ref
from squeezesam.backend.settings import Settings

TOKEN = "0123456789abcdef0123456789abcdef01234567"
SECRET = "X-Amz-Signature=deadbeefsecret"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, "PNG")
    return out.getvalue()


class Recorder(ThreadingHTTPServer):
    """Answers every GET with a small PNG (or a redirect loop under /loop) and records
    (path, Authorization) of each request that reached it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.seen: list[tuple[str, str]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", f"/loop?n={len(self.server.seen)}&{SECRET}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = png()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(address: tuple[str, int]) -> Recorder:
    server = Recorder(address)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def other_port() -> Iterator[Recorder]:
    """A server on another port of the Label Studio host (127.0.0.1)."""
    server = serve(("127.0.0.1", 0))
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture()
def port_80() -> Iterator[Recorder]:
    """A server on localhost:80 (where `http://localhost/...` goes)."""
    try:
        server = serve(("127.0.0.1", 80))
    except OSError as exc:
        pytest.skip(f"cannot listen on 127.0.0.1:80 here: {exc}")
    yield server
    server.shutdown()
    server.server_close()


def ls_settings(url: str, allowed: tuple[str, ...] = ()) -> Settings:
    return Settings(
        label_studio_url=url,
        label_studio_api_key=TOKEN,
        image_allowed_hosts=allowed,
        image_fetch_timeout=3,
    )


# --- item 4: credentials and the allowlist bound to Label Studio's exact origin ---------


def test_token_never_goes_to_port_80_when_label_studio_is_https_without_a_port(port_80):
    settings = ls_settings("https://localhost")
    with pytest.raises(ImageError, match="not allowed") as err:
        Fetcher(settings).fetch("http://localhost/secret.txt")
    assert err.value.status == 403
    assert port_80.seen == []  # no request at all, let alone one with the token


def test_other_ports_of_the_label_studio_host_are_not_fetched(other_port):
    port = other_port.server_address[1]
    for ls_url in ("https://localhost", "http://localhost", f"http://127.0.0.1:{port + 1}"):
        settings = ls_settings(ls_url)
        host = "localhost" if "localhost" in ls_url else "127.0.0.1"
        with pytest.raises(ImageError, match="not allowed") as err:
            Fetcher(settings).fetch(f"http://{host}:{port}/x.png")
        assert err.value.status == 403
    assert other_port.seen == []


def test_same_host_and_port_over_another_scheme_gets_no_token(other_port):
    """LABEL_STUDIO_URL says https: the same host:port over http is not Label Studio."""
    port = other_port.server_address[1]
    settings = ls_settings(f"https://127.0.0.1:{port}")
    with pytest.raises(ImageError, match="not allowed"):
        Fetcher(settings).fetch(f"http://127.0.0.1:{port}/secret.txt")
    assert other_port.seen == []


def test_a_listed_port_of_the_label_studio_host_is_fetched_without_the_token(other_port):
    port = other_port.server_address[1]
    settings = ls_settings("https://localhost", allowed=(f"localhost:{port}",))
    assert Fetcher(settings).fetch(f"http://localhost:{port}/x.png") == png()
    assert other_port.seen == [("/x.png", "")]


def test_label_studio_itself_gets_the_token_with_the_default_port_explicit_or_not(other_port):
    port = other_port.server_address[1]
    settings = ls_settings(f"http://127.0.0.1:{port}")
    fetcher = Fetcher(settings)
    assert fetcher.fetch("/data/upload/1/x.png") == png()
    assert fetcher.fetch(f"http://127.0.0.1:{port}/data/upload/2/x.png") == png()
    assert other_port.seen == [
        ("/data/upload/1/x.png", f"Token {TOKEN}"),
        ("/data/upload/2/x.png", f"Token {TOKEN}"),
    ]
    https = ls_settings("https://ls.example")
    assert resolve("https://ls.example:443/data/upload/1/x.png", https)[1] is True
    assert resolve("https://LS.example/data/upload/1/x.png", https)[1] is True
    assert resolve("/data/upload/1/x.png", https) == (
        "https://ls.example/data/upload/1/x.png",
        True,
    )


@pytest.mark.parametrize(
    "ref",
    [
        "http://ls.example/x.png",  # http, port 80: not https://ls.example
        "https://ls.example:8443/x.png",  # another port
        "http://ls.example:443/x.png",  # the right port, the wrong scheme
        "https://ls.example.:443/x.png",  # another spelling of the host is another host
    ],
)
def test_only_the_exact_origin_is_label_studio(ref):
    with pytest.raises(ImageError, match="not allowed"):
        resolve(ref, ls_settings("https://ls.example"))


def test_a_bare_allowlisted_host_means_its_default_ports_only():
    settings = ls_settings("https://ls.example", allowed=("bucket.example",))
    assert resolve("https://bucket.example/x.png", settings)[1] is False
    assert resolve("http://bucket.example:80/x.png", settings)[1] is False
    with pytest.raises(ImageError, match="not allowed"):
        resolve("http://bucket.example:6379/x.png", settings)


# --- item 9: no query strings in errors or logs -------------------------------------------


def test_too_many_redirects_error_has_no_query_string(other_port, caplog):
    port = other_port.server_address[1]
    settings = ls_settings(f"http://127.0.0.1:{port}")
    ref = f"/loop?fileuri=https://bucket.example/x.jpg&{SECRET}"
    with caplog.at_level(logging.INFO), pytest.raises(ImageError, match="redirects") as err:
        Fetcher(settings).fetch(ref)
    assert err.value.status == 502
    assert "deadbeef" not in str(err.value) and "Signature" not in str(err.value)
    assert "deadbeef" not in caplog.text
    assert "/loop" in str(err.value)  # the path still says which image


@pytest.mark.parametrize(
    "ref, shown",
    [
        (f"https://bucket.example/a/b.jpg?{SECRET}", "https://bucket.example/a/b.jpg?..."),
        (f"/tasks/1/presign/?fileuri=s3%3A%2F%2Fb%2Fx&{SECRET}", "/tasks/1/presign/?..."),
        ("https://user:pw@host.example/x.jpg#frag", "https://host.example/x.jpg"),
        ("/data/upload/1/x.jpg", "/data/upload/1/x.jpg"),
    ],
)
def test_safe_ref_drops_query_userinfo_and_fragment(ref, shown):
    assert safe_ref(ref) == shown


def test_unreachable_and_refused_errors_have_no_query_string():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ls_settings("https://ls.example", allowed=(f"127.0.0.1:{port}",))
    with pytest.raises(ImageError, match="unreachable") as err:
        Fetcher(settings).fetch(f"http://127.0.0.1:{port}/x.jpg?{SECRET}")
    assert "deadbeef" not in str(err.value)
    with pytest.raises(ImageError) as err:
        Fetcher(settings).fetch(f"http://evil.example/x.jpg?{SECRET}")
    assert "deadbeef" not in str(err.value)
