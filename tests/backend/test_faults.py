"""Faults: Redis dies under `squeezesam serve`, the disk fills up, the data directory is
unusable, a newly active model does not load. The service keeps answering and no
accepted label is lost or half-written.

Covered elsewhere (not repeated here): a worker SIGKILLed mid-click (test_worker.py),
no worker at all (test_worker.py), Label Studio down during reconcile (test_reconcile.py)
and during pre-annotation (test_preannotate.py), mask writes failing inside the store
(test_store.py).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from squeezesam.backend.app import create_app
from squeezesam.backend.store import Store
from squeezesam.backend.store import db as store_db

from .conftest import CAPTURES, click_body, free_port, keypoint, upload_ref

# --- `squeezesam serve` as a subprocess (shared with test_secrets_in_logs.py) -------------


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, name) of every descendant of `pid`, from /proc."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append((int(entry.name), name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


class Serve:
    """`squeezesam serve` on a free loopback port, its output captured to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "squeezesam.backend.cli", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(workers)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, click: dict, timeout: float = 180.0) -> requests.Response:
        """Until a click is answered 200 (web up, a worker has its model loaded)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            try:
                last = requests.post(f"{self.url}/predict", json=click, timeout=60, **self.kw)
                if last.status_code == 200:
                    return last
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise AssertionError(f"serve never answered a click: {last and last.text}")

    kw: dict = {}

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.log_path.read_text(errors="replace")


def serve_env(settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = os.environ | settings.to_env()
    for key in ("REDIS_URL", "SQUEEZESAM_MODEL_THREADS"):
        env.pop(key)  # serve starts its own embedded Redis and shares the cores itself
    env |= {
        "SQUEEZESAM_DATA_DIR": str(tmp_path / "data"),
        "TRAIN_MIN_NEW_LABELS": "0",  # no scheduled fine-tuning during a test
        "LOG_LEVEL": "INFO",
    }
    return env | extra


def sample_click(label_config: str, image: Path) -> dict:
    w, h = Image.open(image).size
    return click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h)])


# --- Redis dies --------------------------------------------------------------------------------


def test_redis_killed_under_serve_comes_back_and_clicks_are_answered(
    settings, tmp_path, label_config, sample_images
):
    serve = Serve(serve_env(settings, tmp_path), tmp_path / "serve.log")
    try:
        click = sample_click(label_config, sample_images[1])
        assert serve.wait_ready(click).json()["results"][0]["result"]
        [(redis_pid, _)] = [c for c in children_of(serve.proc.pid) if "redis" in c[1]]
        conn = redis.Redis.from_url(_redis_url_of(serve.proc.pid))
        conn.set("squeezesam:test:persisted", b"1")
        conn.rpush("squeezesam:test:queue", b"job-a", b"job-b")
        time.sleep(1.5)  # appendfsync everysec
        os.kill(redis_pid, signal.SIGKILL)
        t0 = time.monotonic()
        # clicks during the outage get a clear error or are answered; none hangs
        answered = None
        while time.monotonic() - t0 < 120:
            try:
                r = requests.post(f"{serve.url}/predict", json=click, timeout=60)
            except requests.RequestException as exc:
                raise AssertionError(f"the web process dropped the connection: {exc}") from exc
            assert r.headers["Content-Type"].startswith("application/json"), r.text
            if r.status_code == 200:
                answered = time.monotonic() - t0
                break
            assert "error" in r.json(), r.text
            time.sleep(0.5)
        assert answered is not None, serve.log_path.read_text()[-3000:]
        assert conn.get("squeezesam:test:persisted") == b"1"  # the append-only file
        assert conn.lrange("squeezesam:test:queue", 0, -1) == [b"job-a", b"job-b"]
        new_pids = [c for c in children_of(serve.proc.pid) if "redis" in c[1]]
        assert len(new_pids) == 1 and new_pids[0][0] != redis_pid
        print(f"click answered {answered:.1f} s after redis-server was SIGKILLed")
    finally:
        serve.stop()


def _redis_url_of(serve_pid: int) -> str:
    for pid, _name in children_of(serve_pid):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"REDIS_URL="):
                return item.split(b"=", 1)[1].decode()
    raise AssertionError("no child of serve has REDIS_URL")


# --- disk full, unusable data directory -----------------------------------------------------------


def _webhook(name: str) -> dict:
    files = sorted(CAPTURES.glob(name))
    if not files:
        pytest.skip(f"no capture {name}")
    return json.loads(files[0].read_text())["request"]["body"]


@pytest.fixture()
def store_app(settings, tmp_path):
    own = replace(settings, data_dir=str(tmp_path / "data"))
    return own, create_app(own).test_client()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_disk_full_during_a_webhook_is_a_clear_503_and_nothing_half_written(store_app, monkeypatch):
    settings, client = store_app
    created = _webhook("62_*__ml_webhook.json")
    updated = _webhook("65_*__ml_webhook.json")
    assert client.post("/webhook", json=created).status_code == 201
    store = Store.open(settings)
    annotation_id = created["annotation"]["id"]
    before = store.training_annotations()
    masks_before = _files(settings.data_path / "masks")
    assert before and masks_before

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_db.os, "fsync", full)
    answer = client.post("/webhook", json=updated)
    assert answer.status_code == 503, answer.json
    assert "No space left" in answer.json["error"] and "mask" in answer.json["error"]
    # the stored version is intact: same rows, same files, no temp files left behind
    assert store.training_annotations() == before
    assert _files(settings.data_path / "masks") == masks_before
    for obj in before[0].objects:
        assert store.load_mask(obj).any()
    monkeypatch.undo()
    # space again: Label Studio never resends a webhook, the next one (or reconcile) lands
    again = client.post("/webhook", json=updated)
    assert again.status_code == 201 and again.json["result"] == "updated"
    assert store.get_annotation(annotation_id)["updated_at"] > before[0].updated_at


def test_unusable_data_directory_is_a_clear_503_naming_it(settings, tmp_path, label_config):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    own = replace(settings, data_dir=str(blocker / "data"))
    client = create_app(own).test_client()
    answer = client.post("/webhook", json=_webhook("62_*__ml_webhook.json"))
    assert answer.status_code == 503, answer.json
    assert str(blocker) in answer.json["error"] and answer.is_json
    assert blocker.read_text().startswith("a file")  # nothing overwritten
    # the rest of the service is unaffected
    assert client.get("/health").status_code == 200
    setup = client.post("/setup", json={"project": "1.1", "schema": label_config})
    assert setup.status_code == 200


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_data_directory_is_a_clear_503(settings, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        client = create_app(replace(settings, data_dir=str(data))).test_client()
        answer = client.post("/webhook", json=_webhook("62_*__ml_webhook.json"))
        assert answer.status_code == 503 and str(data) in answer.json["error"]
    finally:
        data.chmod(0o755)


# --- a model that fails to load ---------------------------------------------------------------


def test_a_newly_active_model_that_fails_to_load_keeps_the_previous_one(settings, tmp_path, caplog):
    from squeezesam.backend import worker
    from squeezesam.backend.registry import model_registry
    from squeezesam.models.clicks import Click

    rt = worker.Runtime(
        settings=settings,
        predictor=worker.Predictor(settings.model_file, threads=1),
        fetcher=None,
        cache=None,
        registry=model_registry(replace(settings, data_dir=str(tmp_path / "d"))),
        model_token="before",
    )
    serving = rt.predictor
    broken = tmp_path / "broken.onnx"
    for content in (b"", b"not an onnx file", settings.model_file.read_bytes()[:5000]):
        broken.write_bytes(content)
        registry = copy.copy(rt.registry)
        registry.watch_token = lambda c=content: f"token-{len(c)}"
        registry.active_path = lambda: broken
        rt.registry = registry
        caplog.clear()
        assert worker.refresh_model(rt) is False
        assert rt.predictor is serving
        assert any("cannot load the newly active model" in r.message for r in caplog.records)
        # not retried every poll: the same broken token is remembered
        assert worker.refresh_model(rt) is False
    prepared = rt.predictor.prepare(np.zeros((32, 32, 3), np.uint8))
    assert rt.predictor.predict(prepared, [Click(16, 16, True)]).mask.shape == (32, 32)


def test_model_file_missing_is_a_clear_503_not_a_crash(settings, tmp_path):
    gone = replace(settings, model_path=str(tmp_path / "missing.onnx"),
                   data_dir=str(tmp_path / "d"))  # fmt: skip
    client = create_app(gone).test_client()
    answer = client.post("/setup", json={"project": "1.1", "schema": "<View/>"})
    assert answer.status_code in (422, 503) and answer.is_json
    versions = client.get("/versions")
    assert versions.status_code == 503 and "model file not found" in versions.json["error"]
