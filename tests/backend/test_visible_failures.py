"""Failures that leave a trace: one access-log line per request (method, route pattern,
status, ms; no query string, no token), and every misconfigured command is one line on
stderr and a non-zero exit, never a traceback. (A failed click's warning:
test_cloud_storage.py::test_failed_click_logs_one_warning_naming_the_reason.)"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from squeezesam.backend.app import create_app


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "squeezesam.access"]


def test_one_access_line_per_request_with_the_route_pattern(settings, caplog):
    client = create_app(settings).test_client()
    with caplog.at_level(logging.INFO, logger="squeezesam.access"):
        client.get("/preannotate/4711?token=SECRET-TOKEN")
        client.post("/setup?access_token=SECRET-TOKEN", json={"schema": 3})
        client.get("/no/such/page?key=SECRET-TOKEN")
        client.get("/")
    lines = access_lines(caplog)
    assert len(lines) == 4, lines
    pattern = re.compile(r"^(GET|POST) (\(no route\)|\S+) (\d{3}) \d+\.\d ms$")
    parsed = [pattern.match(line).groups() for line in lines]
    assert parsed == [("GET", "/preannotate/<int:project>", "200"), ("POST", "/setup", "422"),
                      ("GET", "(no route)", "404"), ("GET", "/", "200")]  # fmt: skip
    assert not any("SECRET" in line or "4711" in line or "?" in line for line in lines)


def test_refused_requests_are_logged_too(settings, caplog):
    import dataclasses

    locked = dataclasses.replace(settings, basic_auth_user="lead", basic_auth_pass="s3cret")
    with caplog.at_level(logging.INFO, logger="squeezesam.access"):
        create_app(locked).test_client().get("/versions")
    [line] = access_lines(caplog)
    assert line.startswith("GET /versions 401 ")


CLEAN = ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST", "LABEL_STUDIO_API_KEY",
         "LABEL_STUDIO_ACCESS_TOKEN", "REDIS_URL", "IMAGE_MAX_PIXELS", "BASIC_AUTH_USER",
         "BASIC_AUTH_PASS", "LOG_LEVEL")  # fmt: skip

MISCONFIGURED = [
    ("preannotate without LABEL_STUDIO_URL", {}, ["preannotate", "--project", "1"],
     "LABEL_STUDIO_URL is not set"),
    ("worker without REDIS_URL", {}, ["worker", "--queues", "interactive"],
     "REDIS_URL is not set"),
    ("train without REDIS_URL", {}, ["train", "--project", "1"], "REDIS_URL is not set"),
    ("train-scheduler without REDIS_URL", {}, ["train-scheduler"], "REDIS_URL is not set"),
    ("IMAGE_MAX_PIXELS=abc", {"IMAGE_MAX_PIXELS": "abc", "LABEL_STUDIO_URL": "http://ls:1"},
     ["preannotate", "--project", "1"], "IMAGE_MAX_PIXELS='abc'"),
    ("IMAGE_MAX_PIXELS=abc for web", {"IMAGE_MAX_PIXELS": "abc"}, ["web"],
     "IMAGE_MAX_PIXELS='abc'"),
    ("half-set Basic auth", {"BASIC_AUTH_USER": "lead"}, ["labels", "stats"],
     "BASIC_AUTH_USER is set but BASIC_AUTH_PASS is empty"),
    ("LOG_LEVEL=loud", {"LOG_LEVEL": "loud"}, ["worker"], "LOG_LEVEL='loud'"),
    ("REDIS_URL with nothing there", {"REDIS_URL": "redis://127.0.0.1:1"}, ["train"],
     "cannot reach Redis (REDIS_URL)"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "env", "argv", "named"), MISCONFIGURED,
                         ids=[m[0] for m in MISCONFIGURED])  # fmt: skip
def test_misconfigured_command_is_one_line_and_a_nonzero_exit(case, env, argv, named, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    base["SQUEEZESAM_DATA_DIR"] = str(tmp_path)  # never the user's data folder
    done = subprocess.run([sys.executable, "-m", "squeezesam.backend.cli", *argv],
                          env=base | env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0, case
    assert "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"squeezesam {argv[0]}: ") and named in line, line
