"""Zero-click pre-annotation end to end: real Redis, real rq worker processes, real
images, the shipped model, and a stand-in Label Studio REST API (ls_standin.py)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest
import redis

from squeezesam.backend import progress
from squeezesam.backend.preannotate import enqueue_tasks, run_status, start_project
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.registry import model_version

from .conftest import WorkerPool, make_settings
from .ls_standin import TOKEN, StandInLabelStudio

REPO = Path(__file__).resolve().parents[2]
CONFIG = (REPO / "annotation_configs" / "people_pets.xml").read_text()


@pytest.fixture(scope="module")
def standin(sample_images):
    good = sample_images[0].read_bytes()
    images = {p.name: p.read_bytes() for p in sample_images}
    images["corrupt.jpg"] = good[: len(good) // 3]
    server = StandInLabelStudio(images, CONFIG).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pre_settings(model_path, fake_ls, standin):
    server = EmbeddedRedis()  # its own Redis: the session workers talk to another LS
    settings = make_settings(
        server.url, model_path, fake_ls, label_studio_url=standin.url,
        label_studio_api_key=TOKEN, preannotate_chunk=2, preannotate_retry_seconds=20.0,
        preannotate_timeout=20.0,
    )  # fmt: skip
    yield settings
    server.close()


@pytest.fixture(scope="module")
def pool(pre_settings):
    pool = WorkerPool(pre_settings)
    pool.start("preannotate")
    pool.wait_alive("preannotate", 1)
    yield pool
    pool.stop()


@pytest.fixture()
def conn(pre_settings) -> redis.Redis:
    return redis.Redis.from_url(pre_settings.redis_url)


_projects = iter(range(100, 10_000))


def new_project(standin: StandInLabelStudio, names: list[str]) -> tuple[int, list[int]]:
    project = next(_projects)
    return project, standin.add_tasks(project, names)


def wait_finished(conn: redis.Redis, project: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_status(conn, project)
        if status["state"] == "finished":
            return status
        time.sleep(0.2)
    raise TimeoutError(f"project {project} not finished: {run_status(conn, project)}")


def run_project(conn: redis.Redis, settings, project: int, timeout: float = 120.0) -> dict:
    """`POST /preannotate`'s work: the planning job, then the chunks it queued."""
    job = start_project(conn, settings, project)
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in ("finished", "failed"):
        assert time.monotonic() < deadline, "the planning job did not run"
        time.sleep(0.1)
    return wait_finished(conn, project, timeout)


def assert_one_prediction_each(standin, task_ids, version):
    for task_id in task_ids:
        predictions = standin.predictions_of(task_id)
        assert len(predictions) == 1, (task_id, predictions)
        assert predictions[0]["model_version"] == version
        for region in predictions[0]["result"]:
            assert region["type"] == "brushlabels" and region["from_name"] == "tag"
            assert region["value"]["brushlabels"][0] in ("Person", "Pet")
            assert 0.0 <= region["score"] <= 1.0


def test_project_is_preannotated_through_workers(standin, pre_settings, pool, conn, sample_images):
    names = [p.name for p in sample_images[:6]]
    project, ids = new_project(standin, names)
    status = run_project(conn, pre_settings, project)
    version = model_version(pre_settings)
    assert (status["done"], status["failed"], status["total"]) == (6, 0, 6)
    assert status["rate"] > 0
    assert_one_prediction_each(standin, ids, version)
    assert sum(bool(standin.predictions_of(t)[0]["result"]) for t in ids) >= 3  # objects found
    # idempotent: a second run skips every task, writes nothing
    before = len(standin.predictions)
    assert run_project(conn, pre_settings, project)["total"] == 0
    assert len(standin.predictions) == before


def test_tasks_created_hook_then_cache_answers_the_opened_task(
    standin, pre_settings, pool, conn, sample_images
):
    project, ids = new_project(standin, [sample_images[7].name])
    assert enqueue_tasks(conn, pre_settings, project, ids, CONFIG) == 1
    wait_finished(conn, project)
    [written] = standin.predictions_of(ids[0])
    from squeezesam.backend import results_cache
    from squeezesam.backend.labelstudio import parse_label_config

    key = results_cache.key(standin.tasks[ids[0]]["data"]["image"], written["model_version"],
                            parse_label_config(CONFIG))  # fmt: skip
    cached = results_cache.get(conn, key)
    assert cached is not None and f'"score":{written["score"]}' in cached
    assert enqueue_tasks(conn, pre_settings, project, ids) == 0  # done: not queued again


def test_bad_images_are_reported_per_task(standin, pre_settings, pool, conn, sample_images):
    names = [sample_images[0].name, "corrupt.jpg", "missing.jpg", sample_images[1].name]
    project, ids = new_project(standin, names)
    status = run_project(conn, pre_settings, project)
    assert (status["done"], status["failed"]) == (4, 2)
    errors = {e["task"]: e["error"] for e in status["errors"]}
    assert set(errors) == {ids[1], ids[2]}
    assert "corrupt" in errors[ids[1]] and "404" in errors[ids[2]]
    assert len(standin.predictions_of(ids[0])) == len(standin.predictions_of(ids[3])) == 1
    assert not standin.predictions_of(ids[1]) and not standin.predictions_of(ids[2])


def test_label_studio_5xx_for_a_while_loses_no_task(
    standin, pre_settings, pool, conn, sample_images
):
    project, ids = new_project(standin, [p.name for p in sample_images[2:6]])
    failed_before = standin.failed_calls
    standin.fail_until = time.monotonic() + 3.0
    try:
        run_project(conn, pre_settings, project)
    finally:
        standin.fail_until = 0.0
    assert standin.failed_calls > failed_before
    assert_one_prediction_each(standin, ids, model_version(pre_settings))


@pytest.mark.slow  # two worker start-ups and a SIGKILL: ~35 s on 2 busy cores
def test_crash_halfway_then_restart_finishes_without_duplicates(
    standin, pre_settings, pool, conn, sample_images
):
    project, ids = new_project(standin, [p.name for p in sample_images[:10]])
    crash_pool = WorkerPool(dataclasses.replace(pre_settings, preannotate_chunk=1))
    pool.stop()  # only the worker we kill works on this run
    try:
        worker = crash_pool.start("preannotate")
        crash_pool.wait_alive("preannotate", 1)
        start_project(conn, pre_settings, project)
        deadline = time.monotonic() + 60
        while sum(bool(standin.predictions_of(t)) for t in ids) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)  # mid-run, maybe mid-task
        worker.wait()
        written = sum(bool(standin.predictions_of(t)) for t in ids)
        assert written < len(ids)
        # restart: a fresh worker and the same command again
        crash_pool.start("preannotate")
        run_project(conn, pre_settings, project)
        deadline = time.monotonic() + 30  # chunks queued by the first run drain too
        while conn.llen("rq:queue:preannotate") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        crash_pool.stop()
        pool.procs.clear()
        pool.start("preannotate")
        pool.wait_alive("preannotate", 1)
    assert_one_prediction_each(standin, ids, model_version(pre_settings))


def test_progress_contract(conn, pre_settings, standin, pool, sample_images):
    project, ids = new_project(standin, [sample_images[3].name])
    run_project(conn, pre_settings, project)
    [run] = progress.read_progress(conn, project)
    assert run.state == "finished" and run.model_version == model_version(pre_settings)


# --- bulk /predict against the deadline -------------------------------------------------


def test_bulk_predict_answers_by_the_deadline_and_hands_off_the_rest(
    standin, pre_settings, pool, conn, sample_images
):
    from squeezesam.backend.app import create_app

    names = ["corrupt.jpg"] + [p.name for p in sample_images[:30]]
    project, ids = new_project(standin, names)
    tasks = [standin.tasks[t] | {"predictions": []} for t in ids]
    deadline = 1.0
    app = create_app(dataclasses.replace(pre_settings, preannotate_timeout=deadline))
    body = {"tasks": tasks, "project": f"{project}.1700000000", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": None}}  # fmt: skip
    app.test_client().post("/setup", json={"schema": CONFIG})  # warm: model version, config
    started = time.monotonic()
    response = app.test_client().post("/predict", json=body)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < deadline + 1.5  # well inside Label Studio's 100 s
    results = response.json["results"]
    assert len(results) == len(tasks)  # the counts match, so LS stores the ready ones
    ready = [t for t, r in zip(ids, results, strict=True) if "result" in r]
    late = [t for t, r in zip(ids[1:], results[1:], strict=True) if "result" not in r]
    assert ready and late, "the deadline should cut this request in two"
    assert "result" not in results[0] and "corrupt" in results[0]["skipped"]
    # the late tasks are written back to Label Studio by the project job; the answered
    # ones are not (Label Studio stores those from the answer itself)
    wait_finished(conn, project)
    version = model_version(pre_settings)
    assert_one_prediction_each(standin, late, version)
    assert not any(standin.predictions_of(t) for t in ready)
    assert any(e["task"] == ids[0] for e in run_status(conn, project)["errors"])
    # a task pre-annotated in the background now answers from the cache, at once
    started = time.monotonic()
    again = app.test_client().post("/predict", json=body | {"tasks": [tasks[ids.index(late[0])]]})
    assert time.monotonic() - started < 0.5
    [item] = again.json["results"]
    assert item["result"] == standin.predictions_of(late[0])[0]["result"]
