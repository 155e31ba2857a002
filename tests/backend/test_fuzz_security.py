"""Security: every route's auth (enumerated from app.url_map, so new routes are covered
automatically) and SSRF refusals that happen before any connection is attempted.

No packet ever leaves loopback: socket-level connects and DNS look-ups are intercepted;
a connection to anything but the stand-in Label Studio on 127.0.0.1 fails the test.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from dataclasses import replace

import pytest
import urllib3.util.connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squeezesam.backend.app import OPEN_ENDPOINTS, create_app
from squeezesam.backend.images import Fetcher, ImageError, resolve

EXAMPLES = int(os.environ.get("SQUEEZESAM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

USER, PASSWORD, HOOK = "ls", "s3cret-pw", "hook-secret"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- auth on every route --------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked_app(settings, tmp_path_factory):
    # no failed-auth rate limit here: every route is tried many times with bad credentials
    # (the limit has its own test: test_hardening_requests.py)
    own = replace(settings, basic_auth_user=USER, basic_auth_pass=PASSWORD, webhook_secret=HOOK,
                  data_dir=str(tmp_path_factory.mktemp("locked")),
                  auth_failures_per_minute=0)  # fmt: skip
    return create_app(own)


def routes(app):
    """(endpoint, method, path) of every rule; path arguments filled with "1"."""
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, re.sub(r"<[^>]+>", "1", rule.rule)


def test_open_endpoints_are_only_health_and_webhook():
    assert OPEN_ENDPOINTS == {"predict.health", "webhook.webhook"}


@pytest.mark.parametrize(
    "headers",
    [{}, basic(USER, "wrong"), basic("wrong", PASSWORD), basic(USER, ""),
     {"Authorization": "Bearer " + PASSWORD}, {"Authorization": "Basic !!!"}],
    ids=["none", "wrong-password", "wrong-user", "empty-password", "bearer", "garbage"],
)  # fmt: skip
def test_every_route_needs_basic_auth(locked_app, headers):
    client = locked_app.test_client()
    seen = set()
    for endpoint, method, path in routes(locked_app):
        seen.add(endpoint)
        response = client.open(path, method=method, json={}, headers=headers)
        if endpoint == "predict.health":
            assert response.status_code == 200
        elif endpoint == "webhook.webhook":
            assert response.status_code == 403, (path, response.status_code)
            assert "X-Webhook-Secret" in response.json["error"]
        else:
            assert response.status_code == 401, (endpoint, method, path, response.status_code)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert {"predict.predict", "predict.setup", "webhook.webhook", "predict.health",
            "predict.versions"} <= seen  # fmt: skip


def test_with_credentials_no_route_answers_401(locked_app):
    client = locked_app.test_client()
    for endpoint, method, path in routes(locked_app):
        headers = basic(USER, PASSWORD) | {"X-Webhook-Secret": HOOK}
        response = client.open(path, method=method, json={}, headers=headers)
        assert response.status_code not in (401, 403), (endpoint, path, response.status_code)


def test_webhook_secret_variants(locked_app):
    client = locked_app.test_client()
    event = {"action": "PROJECT_UPDATED"}
    for value in ("", HOOK.upper(), HOOK + " ", HOOK[:-1], " " + HOOK):
        answer = client.post("/webhook", json=event, headers={"X-Webhook-Secret": value})
        assert answer.status_code == 403, value
    # the Basic pair stands in for the secret (Label Studio's Start Training carries only
    # the model's Basic auth: test_webhook_basic_auth.py); a wrong pair does not
    assert client.post("/webhook", json=event, headers=basic(USER, PASSWORD)).status_code == 200
    assert client.post("/webhook", json=event, headers=basic(USER, "x")).status_code == 403
    ok = client.post("/webhook", json=event, headers={"X-Webhook-Secret": HOOK})
    assert ok.status_code == 200


# --- SSRF ------------------------------------------------------------------------------------


class Connections:
    """Intercepts connects and DNS: allowed (host, port) pairs pass, anything else fails."""

    def __init__(self, allowed: set[tuple[str, int]]) -> None:
        self.allowed = allowed
        self.attempts: list[tuple[str, int]] = []
        self.refused: list[tuple[str, int]] = []

    def install(self, monkeypatch) -> Connections:
        real_connect = urllib3.util.connection.create_connection

        def guarded_connect(address, *args, **kwargs):
            host, port = address[0], int(address[1])
            self.attempts.append((host, port))
            if (host, port) not in self.allowed:
                self.refused.append((host, port))
                raise ConnectionRefusedError(f"test guard: no connection to {host}:{port}")
            return real_connect(address, *args, **kwargs)

        real_getaddrinfo = socket.getaddrinfo
        numeric = {h for h, _ in self.allowed if h.replace(".", "").isdigit()}

        def no_dns(host, *args, **kwargs):
            if host in numeric:  # urllib3 "resolves" IP literals too: no DNS traffic
                return real_getaddrinfo(host, *args, **kwargs)
            self.attempts.append((str(host), -1))
            self.refused.append((str(host), -1))
            raise socket.gaierror(f"test guard: no DNS look-up of {host}")

        def no_socket_connect(address, *args, **kwargs):
            self.attempts.append((str(address[0]), int(address[1])))
            self.refused.append((str(address[0]), int(address[1])))
            raise ConnectionRefusedError("test guard: socket.create_connection")

        monkeypatch.setattr(urllib3.util.connection, "create_connection", guarded_connect)
        monkeypatch.setattr(socket, "create_connection", no_socket_connect)
        monkeypatch.setattr(socket, "getaddrinfo", no_dns)
        return self


LS_HOST = "ls.test:8080"  # never resolved: connects to it are intercepted
PRIVATE = ["10.0.0.1", "10.255.255.254", "172.16.0.1", "192.168.1.1", "169.254.169.254",
           "127.0.0.1", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]", "[fd00::1]", "localhost",
           "localtest.me", "2130706433", "0x7f000001", "017700000001",
           "metadata.google.internal"]  # fmt: skip
TRICKS = [
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://10.0.0.1/x.jpg",
    "dict://127.0.0.1:11211/", "data:image/png;base64,AAAA", "jar:http://x!/", "//10.0.0.1/x",
    f"http://{LS_HOST}@10.0.0.1/x.jpg", f"http://{LS_HOST}:pw@169.254.169.254/",
    f"http://10.0.0.1#@{LS_HOST}/x.jpg", f"http://10.0.0.1?@{LS_HOST}/x.jpg",
    f"http://10.0.0.1\\@{LS_HOST}/x.jpg", f"http://{LS_HOST}.evil.test/x.jpg",
    f"http://evil.test/{LS_HOST}/x.jpg", f"https://{LS_HOST.split(':')[0]}:22/x.jpg",
    "http:10.0.0.1/x.jpg", "http:/10.0.0.1/x.jpg", "http:///10.0.0.1/x.jpg",
    " http://10.0.0.1/x.jpg", "\thttp://169.254.169.254/", "HTTP://10.0.0.1/x.jpg",
    "http://[::1]:8080/x.jpg", "http://0/x.jpg", "http://127.1/x.jpg",
]  # fmt: skip


@pytest.fixture()
def ls_settings(settings):
    return replace(settings, label_studio_url=f"http://{LS_HOST}", image_allowed_hosts=(),
                   image_fetch_timeout=2)  # fmt: skip


def _assert_refused_or_ls_only(fetcher: Fetcher, ref: str, guard: Connections) -> None:
    before = len(guard.attempts)
    try:
        fetcher.fetch(ref)
    except ImageError as exc:
        assert exc.status in (403, 404, 413, 422, 502), exc
    new = guard.attempts[before:]
    # the only thing ever contacted (or looked up: -1) is Label Studio itself
    assert all(a in (("ls.test", 8080), ("ls.test", -1)) for a in new), (ref, new)


@pytest.mark.parametrize("host", PRIVATE)
def test_private_and_loopback_hosts_refused_before_connecting(host, ls_settings, monkeypatch):
    guard = Connections(set()).install(monkeypatch)
    for url in (f"http://{host}/x.jpg", f"https://{host}:8080/x.jpg"):
        with pytest.raises(ImageError, match="not allowed") as err:
            Fetcher(ls_settings).fetch(url)
        assert err.value.status == 403
    assert guard.attempts == []


@pytest.mark.parametrize("ref", TRICKS)
def test_scheme_and_userinfo_tricks(ref, ls_settings, monkeypatch):
    guard = Connections({("ls.test", 8080)}).install(monkeypatch)
    _assert_refused_or_ls_only(Fetcher(ls_settings), ref, guard)
    assert not [a for a in guard.attempts if a[0] != "ls.test"]


refs = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, sep, userinfo, host, port, path: (
            f"{scheme}{sep}{userinfo}{host}{port}{path}"
        ),
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher", "", "http:"]),
        st.sampled_from(["://", ":", ":/", "//", ":///", ""]),
        st.sampled_from(["", f"{LS_HOST}@", "u:p@", "@", f"{LS_HOST}\\@", "%40"]),
        st.sampled_from(PRIVATE + ["ls.test", LS_HOST, "evil.test", "", "ls.test."]),
        st.sampled_from(["", ":8080", ":22", ":0", ":99999", ":-1", ":x"]),
        st.sampled_from(
            [
                "/x.jpg",
                "",
                "/../../x",
                "#@ls.test:8080/",
                "?@ls.test:8080",
                "\\@ls.test:8080/",
                "/%2e%2e/x",
            ]
        ),  # fmt: skip
    ),
)


@FUZZ
@given(ref=refs)
def test_any_reference_contacts_label_studio_or_nothing(ref, ls_settings, monkeypatch):
    with monkeypatch.context() as patch:
        guard = Connections({("ls.test", 8080)}).install(patch)
        _assert_refused_or_ls_only(Fetcher(ls_settings), ref, guard)
        try:
            url, with_auth = resolve(ref, ls_settings)
        except ImageError:
            return
        if with_auth:  # credentials only ever for the Label Studio host itself
            from urllib.parse import urlsplit

            assert urlsplit(url).netloc.lower() == LS_HOST


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.jpg",
     "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://127.0.0.1/x",
     "http://{ls}@10.0.0.1/", "http://10.0.0.1#@{ls}/", "http://localhost:{port}/public/x.jpg",
     "http://127.0.0.1:{other}/x.jpg", "//169.254.169.254/x"],
)  # fmt: skip
def test_redirects_to_hosts_not_allowed_are_refused(target, settings, fake_ls, monkeypatch):
    """The stand-in Label Studio's presign answers 302 to `target`: refused before following."""
    port = fake_ls.server_address[1]
    own = replace(settings, image_allowed_hosts=())  # no extra hosts at all
    target = target.format(ls=f"127.0.0.1:{port}", port=port, other=port + 1)
    guard = Connections({("127.0.0.1", port)}).install(monkeypatch)
    from urllib.parse import quote

    with pytest.raises(ImageError) as err:
        Fetcher(own).fetch(f"/tasks/1/presign/?fileuri={quote(target, safe='')}")
    assert err.value.status in (403, 422), err.value
    assert guard.refused == [], guard.refused  # only the stand-in was ever contacted
    assert guard.attempts and set(guard.attempts) == {("127.0.0.1", port)}
