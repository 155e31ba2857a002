"""End-to-end fixtures: a real Label Studio 1.23.2 and a real `squeezesam serve`.

Label Studio runs from its own virtual environment (`tests/e2e/install_labelstudio.sh`,
default `.venv-labelstudio/`; `SQUEEZESAM_LS_VENV` overrides it), headless on loopback
with a fresh data dir, a user and a legacy token made from the command line (as
`shared/labelstudio/start_labelstudio.sh` does). Our backend runs as `squeezesam serve`
(embedded Redis, web, workers) behind a small recording proxy: Label Studio talks to the
proxy, the proxy forwards to the backend and keeps every request body it saw, so the
tests can compare the live payloads with the captures. Everything is killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LS_USER = "admin@example.com"
LS_PASSWORD = "Test-Pass-123"
LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
LS_START_TIMEOUT = float(os.environ.get("LS_START_TIMEOUT", 240))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    try:  # children that outlived their parent (same group)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _interrupt_on_sigterm() -> None:
    """CI's `timeout` sends SIGTERM: turn it into KeyboardInterrupt so that pytest still
    runs the fixtures' teardown and Label Studio/serve (own sessions) do not outlive us."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- Label Studio ---------------------------------------------------------------------------


@dataclass
class LabelStudio:
    url: str
    data_dir: Path
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    def api(self, method: str, path: str, expect: int | tuple = (200, 201), **kw):
        response = self.session.request(method, self.url + path, timeout=120, **kw)
        ok = (expect,) if isinstance(expect, int) else expect
        assert response.status_code in ok, (method, path, response.status_code, response.text)
        return response.json() if response.content else None


@pytest.fixture(scope="session")
def labelstudio(tmp_path_factory) -> LabelStudio:
    venv = Path(os.environ.get("SQUEEZESAM_LS_VENV", REPO / ".venv-labelstudio"))
    exe = venv / "bin" / "label-studio"
    if not exe.is_file():
        pytest.fail(f"no Label Studio at {exe}: run tests/e2e/install_labelstudio.sh")
    _interrupt_on_sigterm()
    data_dir = tmp_path_factory.mktemp("labelstudio")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "VIRTUAL_ENV"))}
    env.update(
        LABEL_STUDIO_USERNAME=LS_USER,
        LABEL_STUDIO_PASSWORD=LS_PASSWORD,
        LABEL_STUDIO_USER_TOKEN=LS_TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_HOST=url,
        # both default to true and both block a backend on loopback (see the README)
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        COLLECT_ANALYTICS="false",
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
    )
    log = data_dir / "labelstudio.log"
    cmd = [str(exe), "start", "--no-browser", "--data-dir", str(data_dir),
           "--internal-host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    ls = LabelStudio(url, data_dir, log)
    ls.session.headers["Authorization"] = f"Token {LS_TOKEN}"
    try:
        deadline = time.monotonic() + LS_START_TIMEOUT
        while True:  # /health answers before the user exists: wait for the token instead
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited ({proc.returncode}):\n{_tail(log)}")
            try:
                if ls.session.get(url + "/api/current-user/whoami", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio not ready after {LS_START_TIMEOUT:.0f}s:\n{_tail(log)}")
            time.sleep(1)
        yield ls
    finally:
        _stop(proc)


# --- our backend, behind a recording proxy ------------------------------------------------


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to the backend and records (method, path, body, answer)."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", free_port()), _ProxyHandler)
        self.target = target
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.http = requests.Session()
        self.http.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def seen(self, path: str, **match) -> list[dict]:
        with self.lock:
            found = [r for r in self.records if r["path"] == path]
        for key, value in match.items():
            found = [
                b for b in found if isinstance(b["body"], dict) and b["body"].get(key) == value
            ]
        return found


class _ProxyHandler(BaseHTTPRequestHandler):
    server: RecordingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
        }
        started = time.monotonic()
        upstream = self.server.http.request(
            self.command, self.server.target + self.path, data=raw, headers=headers, timeout=120
        )
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        try:
            answer = upstream.json()
        except ValueError:
            answer = upstream.text
        with self.server.lock:
            self.server.records.append(
                {"method": self.command, "path": self.path.split("?")[0], "body": body,
                 "status": upstream.status_code, "answer": answer, "time": time.time(),
                 "seconds": time.monotonic() - started}
            )  # fmt: skip
        try:
            # our reason phrase too: Label Studio keeps only `str(HTTPError)`, which holds it
            self.send_response(upstream.status_code, upstream.reason)
            self.send_header("Content-Type", upstream.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(upstream.content)))
            self.end_headers()
            self.wfile.write(upstream.content)
        except (BrokenPipeError, ConnectionResetError):
            pass  # Label Studio gave up waiting (its webhook timeout is 1 s); recorded anyway

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815


@dataclass
class Backend:
    url: str  # the recording proxy Label Studio is given
    direct_url: str
    data_dir: Path
    log: Path
    proxy: RecordingProxy
    env: dict


@pytest.fixture(scope="session")
def backend(labelstudio, tmp_path_factory, model_path) -> Backend:
    import redis

    from squeezesam.backend.queues import alive_workers

    data_dir = tmp_path_factory.mktemp("squeezesam")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        LABEL_STUDIO_URL=labelstudio.url,
        LABEL_STUDIO_API_KEY=LS_TOKEN,
        SQUEEZESAM_DATA_DIR=str(data_dir),
        SQUEEZESAM_MODEL_PATH=str(model_path),
        SQUEEZESAM_MODEL_THREADS="1",  # 2 shared cores: one thread per worker
        LOG_LEVEL="INFO",
    )
    log = data_dir / "serve.log"
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    direct = f"http://127.0.0.1:{port}"
    proxy = RecordingProxy(direct)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        redis_url = None
        while True:  # web answers /health, and both kinds of worker beat in Redis
            if proc.poll() is not None:
                pytest.fail(f"squeezesam serve exited ({proc.returncode}):\n{_tail(log)}")
            if redis_url is None:
                found = re.search(r"embedded Redis at (\S+)", log.read_text(errors="replace"))
                redis_url = found and found.group(1)
            try:
                up = requests.get(direct + "/health", timeout=2).ok
            except requests.RequestException:
                up = False
            if up and redis_url:
                connection = redis.Redis.from_url(redis_url)
                if alive_workers(connection, "interactive") and alive_workers(
                    connection, "preannotate"
                ):
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"squeezesam serve not ready after 120 s:\n{_tail(log)}")
            time.sleep(0.5)
        env["REDIS_URL"] = redis_url
        yield Backend(proxy.url, direct, data_dir, log, proxy, env)
    finally:
        proxy.shutdown()
        _stop(proc)
