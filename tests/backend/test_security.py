"""HTTP Basic auth and the webhook secret, enforced only where configured."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from squeezesam.backend.app import create_app


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def locked(settings):
    app = create_app(
        replace(settings, basic_auth_user="ls", basic_auth_pass="s3cret", webhook_secret="hook")
    )
    return app.test_client()


def test_basic_auth_required_where_configured(locked, label_config):
    setup = {"project": "1.1", "schema": label_config}
    assert locked.post("/setup", json=setup).status_code == 401
    denied = locked.post("/setup", json=setup, headers=basic("ls", "wrong"))
    assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
    assert denied.json["error"].startswith("HTTP Basic authentication")
    assert locked.post("/predict", json={}, headers=basic("x", "y")).status_code == 401
    assert locked.get("/versions").status_code == 401
    assert locked.post("/setup", json=setup, headers=basic("ls", "s3cret")).status_code == 200
    assert locked.get("/health").status_code == 200  # liveness stays open


def test_webhook_secret(locked, client):
    event = {"action": "ANNOTATION_CREATED", "annotation": {}, "project": {}}
    assert locked.post("/webhook", json=event).status_code == 403
    wrong = locked.post("/webhook", json=event, headers={"X-Webhook-Secret": "nope"})
    assert wrong.status_code == 403 and "X-Webhook-Secret" in wrong.json["error"]
    ok = locked.post("/webhook", json=event, headers={"X-Webhook-Secret": "hook"})
    assert ok.status_code == 400  # past the secret check: the empty annotation is refused
    # not configured: open, as Label Studio's auto-created webhook sends no header
    assert client.post("/webhook", json=event).status_code == 400  # past the secret check
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).json == {
        "status": "Unknown event"
    }


def test_settings_never_show_secrets(settings):
    shown = repr(
        replace(settings, basic_auth_user="ls", basic_auth_pass="pw-123", webhook_secret="wh-456")
    )
    for secret in ("pw-123", "wh-456", settings.label_studio_api_key):
        assert secret not in shown
