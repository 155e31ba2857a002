"""No secret in any log line: `squeezesam serve` (web + workers + embedded Redis) runs at
LOG_LEVEL=DEBUG with every secret set, goes through good clicks, errors, auth failures, a
webhook and an unreachable database, and all its output is scanned for the secret values
(plain, base64 as in a Basic header, and URL-encoded)."""

from __future__ import annotations

import base64
import urllib.parse

import requests

from .conftest import LEGACY_TOKEN
from .test_faults import Serve, sample_click, serve_env

BASIC_USER, BASIC_PASS = "labelstudio", "basic-PASS-7c1f0e"
WEBHOOK_SECRET = "webhook-SECRET-93ab22"
DB_PASSWORD = "db-PASSWORD-55d0aa"


def test_no_secret_in_any_log_output(settings, tmp_path, label_config, sample_images, fake_ls):
    env = serve_env(
        settings,
        tmp_path,
        LOG_LEVEL="DEBUG",
        LABEL_STUDIO_API_KEY=LEGACY_TOKEN,
        BASIC_AUTH_USER=BASIC_USER,
        BASIC_AUTH_PASS=BASIC_PASS,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        # port 1 on loopback: connection refused at once, so the store's errors get logged
        DATABASE_URL=f"postgresql://squeezesam:{DB_PASSWORD}@127.0.0.1:1/labels",
    )
    serve = Serve(env, tmp_path / "serve.log")
    auth = (BASIC_USER, BASIC_PASS)
    serve.kw = {"auth": auth}
    try:
        click = sample_click(label_config, sample_images[2])
        assert serve.wait_ready(click).status_code == 200  # images fetched with the token
        post = lambda path, **kw: requests.post(f"{serve.url}{path}", timeout=60, **kw)  # noqa: E731
        assert post("/predict", json=click, auth=(BASIC_USER, "wrong")).status_code == 401
        assert post("/setup", json={"schema": label_config}, auth=auth).status_code == 200
        bad = sample_click(label_config, sample_images[2])
        bad["tasks"][0]["data"]["image"] = "/corrupt.jpg"
        assert post("/predict", json=bad, auth=auth).status_code == 422
        missing = sample_click(label_config, sample_images[2])
        missing["tasks"][0]["data"]["image"] = "/data/upload/1/0badf00d-missing.jpg"
        assert post("/predict", json=missing, auth=auth).status_code == 404
        annotation = {"id": 1, "result": [], "updated_at": "2026-01-01T00:00:00Z"}
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": {"id": 1},
                 "annotation": annotation}  # fmt: skip
        assert post("/webhook", json=event).status_code == 403  # no secret
        stored = post("/webhook", json=event, headers={"X-Webhook-Secret": WEBHOOK_SECRET})
        assert stored.status_code == 503  # the database is unreachable: said, not leaked
        assert DB_PASSWORD not in stored.text
        assert requests.get(f"{serve.url}/versions", auth=auth, timeout=30).status_code == 200
    finally:
        output = serve.stop()
    assert "DEBUG" in output or "INFO" in output or "WARNING" in output, "no log captured?"
    secrets = {
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
        "BASIC_AUTH_PASS": BASIC_PASS,
        "WEBHOOK_SECRET": WEBHOOK_SECRET,
        "DATABASE_URL password": DB_PASSWORD,
    }
    forms = {}
    for name, value in secrets.items():
        forms[name] = value
        forms[name + " (url-encoded)"] = urllib.parse.quote(value)
    basic = base64.b64encode(f"{BASIC_USER}:{BASIC_PASS}".encode()).decode()
    forms["Basic header"] = basic
    leaked = {name for name, value in forms.items() if value in output}
    assert not leaked, f"secrets in the logs: {sorted(leaked)}"
    print(f"scanned {len(output.splitlines())} log lines: no secret")
