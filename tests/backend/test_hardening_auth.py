"""Malformed credentials are a 4xx, never a 500 (issue 20, item 7), and half-set auth
refuses to start (item 8).

`hmac.compare_digest` raised TypeError on a non-ASCII `str`: a non-ASCII Basic
username/password or X-Webhook-Secret was a 500 with a traceback per request, and a
non-ASCII configured password locked everyone out. `BASIC_AUTH_USER` with an empty
password silently turned auth off."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys

import pytest

from squeezesam.backend.app import create_app
from squeezesam.backend.auth import same_secret, webhook_secret_ok
from squeezesam.backend.settings import Settings

from .conftest import free_port


def basic(user: bytes | str, password: bytes | str) -> dict[str, str]:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":"
    raw += password if isinstance(password, bytes) else password.encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def wire(text: str) -> str:
    """A header as WSGI hands it over when the client sent `text` as UTF-8 bytes."""
    return text.encode().decode("latin-1")


@pytest.fixture()
def guarded(tmp_path):
    settings = Settings(
        basic_auth_user="ls",
        basic_auth_pass="pässwörd-ß",  # a non-ASCII configured password
        webhook_secret="hook-ü",
        data_dir=str(tmp_path),
    )
    return create_app(settings).test_client()


@pytest.mark.parametrize(
    "headers",
    [
        basic("lé", "pässwörd-ß"),
        basic("ls", "wrong-é"),
        basic("ls", "日本語"),
        basic(b"ls", "pässwörd-ß".encode("latin-1")),  # not UTF-8 at all
        basic("ls", ""),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer é"},
    ],
    ids=["user", "password", "cjk", "latin-1", "empty", "bad-base64", "bearer"],
)
def test_non_ascii_or_malformed_basic_credentials_are_a_401(guarded, headers, caplog):
    with caplog.at_level(logging.ERROR):
        response = guarded.get("/versions", headers=headers)
    assert response.status_code == 401, response.get_json()
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert "Traceback" not in caplog.text and "internal error" not in caplog.text


def test_a_non_ascii_configured_password_lets_its_owner_in(guarded):
    response = guarded.get("/no-such-route", headers=basic("ls", "pässwörd-ß"))
    assert response.status_code == 404  # past the guard (401 without, 500 before)


@pytest.mark.parametrize("given", ["hoök", "日本", wire("hook-x"), "", "hook-u"])
def test_non_ascii_or_wrong_webhook_secret_is_a_403(guarded, given, caplog):
    with caplog.at_level(logging.ERROR):
        response = guarded.post(
            "/webhook", json={"action": "PROJECT_UPDATED"}, headers={"X-Webhook-Secret": given}
        )
    assert response.status_code == 403
    assert "Traceback" not in caplog.text


def test_the_right_non_ascii_webhook_secret_passes_the_check():
    assert webhook_secret_ok(wire("hook-ü"), "hook-ü")  # UTF-8 on the wire, as LS sends it
    assert not webhook_secret_ok(wire("hook-u"), "hook-ü")
    assert not webhook_secret_ok(None, "hook-ü")
    assert same_secret("pässwörd", "pässwörd") and not same_secret("passwort", "pässwörd")
    assert not same_secret("\udcff", "x")  # a lone surrogate: False, not an exception


# --- item 8: half-set auth refuses to start ---------------------------------------------


@pytest.mark.parametrize(
    "user, password, named",
    [("ls", "", "BASIC_AUTH_PASS is empty"), ("", "s3cret", "BASIC_AUTH_USER is empty")],
)
def test_half_set_basic_auth_is_refused(user, password, named):
    with pytest.raises(ValueError, match=named):
        Settings(basic_auth_user=user, basic_auth_pass=password)
    with pytest.raises(ValueError, match=named):
        Settings.from_env({"BASIC_AUTH_USER": user, "BASIC_AUTH_PASS": password})


@pytest.mark.parametrize("command", ["web", "serve"])
def test_half_set_basic_auth_refuses_to_start_with_one_line(command, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIC_AUTH")}
    env |= {"BASIC_AUTH_USER": "labelstudio", "BASIC_AUTH_PASS": "",
            "SQUEEZESAM_DATA_DIR": str(tmp_path)}  # fmt: skip
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", command, "--host", "127.0.0.1"]
    try:
        result = subprocess.run(
            cmd + ["--port", str(free_port())], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"`squeezesam {command}` started with auth half set (auth silently off)")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert "BASIC_AUTH_USER is set but BASIC_AUTH_PASS is empty" in lines[0]


def test_web_on_all_interfaces_without_auth_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASIC_AUTH")}
    env |= {"SQUEEZESAM_DATA_DIR": str(tmp_path), "WEBHOOK_SECRET": ""}
    port = free_port()
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "web", "--host", "0.0.0.0"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # the warnings come before "web on http://..."
            lines.append(line)
            if "web on http://" in line or len(lines) > 50:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = "".join(lines)
    assert "without BASIC_AUTH_USER/BASIC_AUTH_PASS" in text, text
    assert "without WEBHOOK_SECRET" in text, text
