"""`/webhook` takes Label Studio's Start Training as Label Studio 1.23 really sends it.

Label Studio 1.23.2 sends `START_TRAINING` through its ML connector
(`label_studio/ml/api_connector.py`: `MLApi.train` -> `_request('webhook', ...)` ->
`requests` with `HTTPBasicAuth(basic_auth_user, basic_auth_pass)` of the model and the
session headers `User-Agent: heartex/<version>` only), never with the headers of the
project webhook it creates (capture 72: no `X-Webhook-Secret`). With WEBHOOK_SECRET set,
`/webhook` answered that 403 and Start Training never queued a run. The rule now: the
right `X-Webhook-Secret`, or (Basic auth configured) the right Basic pair; else 403.
Failed Basic credentials on `/webhook` count against the failed-login limit."""

from __future__ import annotations

import base64
import threading

import pytest
import redis
import requests
from requests.auth import HTTPBasicAuth

from squeezesam.backend.app import create_app
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.serve import web_server
from squeezesam.backend.settings import Settings

from .conftest import load_capture, make_settings

# ASCII: Label Studio's `requests` sends a non-ASCII Basic password as latin-1, which
# werkzeug does not decode (test_hardening_auth.py: not UTF-8, no credentials)
USER, PASSWORD, HOOK = "labelstudio", "s3cret-9f2c", "hook-secret"
START_TRAINING = load_capture("72_start_training__ml_webhook.json")[0]["request"]


def basic(user: bytes | str, password: bytes | str) -> dict[str, str]:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":"
    raw += password if isinstance(password, bytes) else password.encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


@pytest.fixture()
def own_redis(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", watchdog=False)
    yield server
    server.close()


def test_start_training_with_the_models_basic_auth_and_no_webhook_secret_queues_a_run(
    own_redis, model_path, fake_ls, tmp_path
):
    """Over HTTP (waitress, as `squeezesam web`), posted the way Label Studio's
    `MLApi.train` posts it: the captured body, the connector's headers, Basic auth."""
    assert "X-Webhook-Secret" not in START_TRAINING["headers"]  # what LS really sends
    settings = make_settings(own_redis.url, model_path, fake_ls, basic_auth_user=USER,
                             basic_auth_pass=PASSWORD, webhook_secret=HOOK,
                             data_dir=str(tmp_path / "data"))  # fmt: skip
    server = web_server(create_app(settings), "127.0.0.1", 0, threads=2)
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{server.effective_port}/webhook"
    try:
        with requests.Session() as ls:  # Label Studio's BaseHTTPAPI session
            ls.headers.update({"User-Agent": START_TRAINING["headers"]["User-Agent"]})
            body = START_TRAINING["body"]
            refused = ls.post(url, json=body, timeout=30)
            assert refused.status_code == 403, refused.text  # neither secret nor pair
            wrong = ls.post(url, json=body, auth=HTTPBasicAuth(USER, "wrong"), timeout=30)
            assert wrong.status_code == 403, wrong.text
            answer = ls.post(url, json=body, auth=HTTPBasicAuth(USER, PASSWORD), timeout=30)
        assert answer.status_code == 201, answer.text
        job = answer.json()["job"]  # with a `job`, Label Studio records a train job
        queued = redis.Redis.from_url(own_redis.url).lrange("rq:queue:train", 0, -1)
        assert job.encode() in queued
    finally:
        server.close()


@pytest.fixture()
def guarded(tmp_path):
    def make(**over) -> object:
        values = dict(basic_auth_user=USER, basic_auth_pass=PASSWORD, webhook_secret=HOOK,
                      data_dir=str(tmp_path))  # fmt: skip
        return create_app(Settings(**(values | over))).test_client()

    return make


EVENT = {"action": "PROJECT_UPDATED"}


@pytest.mark.parametrize(
    "headers",
    [{}, basic(USER, "wrong"), basic("lé", PASSWORD), basic(USER, "日本語"),
     basic(b"labelstudio", "pässwort".encode("latin-1")), {"Authorization": "Basic !!!"},
     {"Authorization": "Bearer " + PASSWORD}, {"X-Webhook-Secret": "hoök"}],
    ids=["none", "wrong", "non-ascii-user", "cjk", "latin-1", "garbage", "bearer", "secret"],
)  # fmt: skip
def test_webhook_without_the_secret_or_the_basic_pair_is_a_403(guarded, headers, caplog):
    response = guarded().post("/webhook", json=EVENT, headers=headers)
    assert response.status_code == 403, response.get_json()
    assert "X-Webhook-Secret" in response.get_json()["error"]
    assert "Traceback" not in caplog.text


def test_webhook_takes_either_the_secret_or_the_basic_pair(guarded):
    client = guarded()
    for headers in ({"X-Webhook-Secret": HOOK}, basic(USER, PASSWORD),
                    basic(USER, "wrong") | {"X-Webhook-Secret": HOOK}):  # fmt: skip
        assert client.post("/webhook", json=EVENT, headers=headers).status_code == 200


def test_webhook_basic_pair_counts_only_where_basic_auth_is_configured(guarded):
    client = guarded(basic_auth_user="", basic_auth_pass="")
    assert client.post("/webhook", json=EVENT, headers=basic(USER, PASSWORD)).status_code == 403
    hooked = client.post("/webhook", json=EVENT, headers={"X-Webhook-Secret": HOOK})
    assert hooked.status_code == 200


def test_webhook_basic_auth_failures_are_rate_limited_like_every_route(guarded):
    client = guarded(auth_failures_per_minute=3)
    guesser = {"REMOTE_ADDR": "203.0.113.7"}
    for _ in range(3):
        r = client.post("/webhook", json=EVENT, headers=basic(USER, "guess"), environ_base=guesser)
        assert r.status_code == 403
    limited = client.post("/webhook", json=EVENT, headers=basic(USER, PASSWORD),
                          environ_base=guesser)  # fmt: skip
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    # the limit is shared with the Basic-auth routes
    assert client.get("/versions", headers=basic(USER, PASSWORD),
                      environ_base=guesser).status_code == 429  # fmt: skip
    # the right webhook secret is never limited; other addresses are not affected
    hooked = client.post("/webhook", json=EVENT, headers={"X-Webhook-Secret": HOOK},
                         environ_base=guesser)  # fmt: skip
    assert hooked.status_code == 200
    elsewhere = {"REMOTE_ADDR": "198.51.100.9"}
    ok = client.post("/webhook", json=EVENT, headers=basic(USER, PASSWORD), environ_base=elsewhere)
    assert ok.status_code == 200
