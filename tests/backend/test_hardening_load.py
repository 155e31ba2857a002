"""Real server processes under load and at their limits (issue 20, items 2 and 6).

A real `squeezesam web` process, real rq worker processes, a real (embedded) Redis and
real sockets:

* item 2: many concurrent bulk `/predict` requests of slow uncached tasks used to answer
  `500 internal error: InvalidJobOperation` (a job's key expired while its request still
  waited), and Label Studio then stored nothing for any task of the request. Every
  answer must be 200 with one item per task: a result, or an item without one.
* item 6: a body over MAX_REQUEST_BYTES is answered 413 JSON before it is read (and
  before auth); a chunked body without Content-Length is cut off the same way.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from squeezesam.backend.redis_conn import EmbeddedRedis

from .conftest import WorkerPool, free_port, make_settings
from .test_hardening_slow_clients import wait_up

REQUESTS = 17  # the reproduction: 17 concurrent bulk requests of 3 slow tasks
TASKS = 3


def start_web(settings, port: int, **extra_env: str) -> subprocess.Popen:
    env = os.environ | settings.to_env() | extra_env
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "web", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    return subprocess.Popen(cmd, env=env)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_concurrent_bulk_predicts_of_slow_tasks_never_answer_500(
    model_path, fake_ls, sample_images, label_config, tmp_path
):
    redis_server = EmbeddedRedis(tmp_path / "redis", watchdog=False)
    # a fractional timeout: jobs expired up to a second before their request stopped
    # waiting (ttl was int(timeout)), the widest window of the race
    settings = make_settings(redis_server.url, model_path, fake_ls, preannotate_timeout=2.6)
    fake_ls.slow_seconds = 1.0
    pool = WorkerPool(settings)
    port = free_port()
    web = start_web(settings, port)
    url = f"http://127.0.0.1:{port}"
    try:
        pool.start("preannotate")
        pool.wait_alive("preannotate", 1)
        wait_up(url)

        def bulk(n: int) -> tuple[int, str]:
            tasks = [
                {"id": 1000 + n * TASKS + i, "project": 1,
                 "data": {"image": f"http://{fake_ls.other_host}/slow/"
                                   f"{sample_images[(n + i) % len(sample_images)].name}"
                                   f"?request={n}&task={i}"}}
                for i in range(TASKS)
            ]  # fmt: skip
            body = {"tasks": tasks, "label_config": label_config, "project": "1.1764441367"}
            r = requests.post(f"{url}/predict", json=body, timeout=60)
            return r.status_code, r.text

        with ThreadPoolExecutor(REQUESTS) as ex:
            answers = list(ex.map(bulk, range(REQUESTS)))
    finally:
        stop(web)
        pool.stop()
        redis_server.close()
    statuses = [status for status, _ in answers]
    assert statuses == [200] * REQUESTS, [a for a in answers if a[0] != 200][:3]
    with_result = 0
    for _, text in answers:
        items = json.loads(text)["results"]
        assert len(items) == TASKS  # one item per task, so Label Studio stores the rest
        for item in items:
            assert "result" in item or "skipped" in item, item
            with_result += "result" in item
    assert with_result < REQUESTS * TASKS  # the load was real: some tasks were not ready


# --- item 6: the request body limit ---------------------------------------------------------

LIMIT = 1_000_000  # MAX_REQUEST_BYTES of the web process under test


@pytest.fixture()
def limited_web(model_path, fake_ls, tmp_path):
    """`squeezesam web` with Basic auth and MAX_REQUEST_BYTES=LIMIT (no Redis needed:
    every request here is answered before a route runs)."""
    settings = make_settings("redis://127.0.0.1:1/0", model_path, fake_ls,
                             basic_auth_user="lead", basic_auth_pass="s3cret")  # fmt: skip
    port = free_port()
    web = start_web(settings, port, MAX_REQUEST_BYTES=str(LIMIT))
    try:
        wait_up(f"http://127.0.0.1:{port}")
        yield port
    finally:
        stop(web)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Status, headers and body of one HTTP/1.1 response with a Content-Length."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_declared_body_over_the_limit_is_a_413_before_it_is_read_and_before_auth(
    limited_web,
):
    """400 MB announced, 64 kB sent, no credentials: the answer is 413 JSON at once; the
    server neither waits for the body (it used to read it all and spool it to /tmp) nor
    answers 401 first."""
    declared = 400_000_000
    sock = socket.create_connection(("127.0.0.1", limited_web), timeout=10)
    with sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {declared}\r\n\r\n".encode()
            + b"[" * 65536
        )
        t0 = time.monotonic()
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - t0
    assert status == 413, (status, body)
    assert headers["content-type"].startswith("application/json")
    answer = json.loads(body)
    assert answer["status"] == 413 and "MAX_REQUEST_BYTES" in answer["error"], answer
    assert str(LIMIT) in answer["error"]
    assert elapsed < 5.0  # answered, not waiting for the other 399.9 MB


def test_a_chunked_body_past_the_limit_is_cut_off_with_a_413(limited_web):
    """No Content-Length: the body is counted as it arrives and refused once it passes
    the limit. The client keeps sending (never the closing chunk) until an answer is
    there to read: it is a 413 long before 10x the limit went out."""
    sock = socket.create_connection(("127.0.0.1", limited_web), timeout=10)
    sent = 0
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with sock:
        sock.sendall(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < 10 * LIMIT and not select.select([sock], [], [], 0)[0]:
                sock.sendall(framed)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: expected
        status, headers, body = read_response(sock)
    assert status == 413, (status, body)
    assert json.loads(body)["status"] == 413
    assert sent < 10 * LIMIT  # answered while the body was still coming


def test_a_body_within_the_limit_still_reaches_auth(limited_web):
    url = f"http://127.0.0.1:{limited_web}/predict"
    small = requests.post(url, data=b"{" + b" " * (LIMIT - 2) + b"}", timeout=30)
    assert small.status_code == 401  # not too large: the guard asks for credentials
    big = requests.post(url, data=b"{" + b" " * (LIMIT - 1) + b"}", timeout=30)
    assert big.status_code == 413 and big.json()["status"] == 413
