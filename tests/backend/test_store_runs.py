"""The fine-tuning runs in the label store (store/runs.py) and what the scheduler reads
(store/reads.py), on SQLite and (with SQUEEZESAM_TEST_POSTGRES_URL, e.g. from
.ci/postgres.sh) PostgreSQL: labels since the last run, the projects, runs left behind
by a dead worker."""

from __future__ import annotations

import copy
import datetime as dt
import json

from squeezesam.backend import webhooks
from squeezesam.backend.store import reads
from squeezesam.backend.store.runs import (
    close_interrupted_runs,
    record_training_run,
    training_runs,
)

from .conftest import load_capture


def created(annotation_id: int, task_id: int, project: int = 2) -> dict:
    body = copy.deepcopy(load_capture("62_*__ml_webhook.json")[0]["request"]["body"])
    body["annotation"] |= {"id": annotation_id, "task": task_id, "project": project}
    body["task"] |= {"id": task_id, "project": project}
    return body


def new_labels_since_last_run(store, project: int) -> int:
    with reads.reading(store.engine) as conn:
        return reads.new_labels_since_last_run(conn, project)


def projects(store) -> list[int]:
    with reads.reading(store.engine) as conn:
        return reads.project_ids(conn)


def test_new_labels_are_counted_since_the_last_run(store):
    assert new_labels_since_last_run(store, 2) == 0 and projects(store) == []
    webhooks.handle_event(store, created(1, 1))
    webhooks.handle_event(store, created(2, 2))
    webhooks.handle_event(store, created(3, 3, project=5))
    assert new_labels_since_last_run(store, 2) == 2 and projects(store) == [2, 5]
    started = dt.datetime.now(dt.UTC)
    run = record_training_run(store.engine, project=2, started_at=started,
                              status="finished", metrics={"candidate": {}})  # fmt: skip
    assert run and new_labels_since_last_run(store, 2) == 0
    assert new_labels_since_last_run(store, 5) == 1  # another project's run does not count
    webhooks.handle_event(store, created(4, 4))
    webhooks.handle_event(store, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}]})
    assert new_labels_since_last_run(store, 2) == 0  # deleted labels are not new labels
    webhooks.handle_event(store, created(5, 5))
    assert new_labels_since_last_run(store, 2) == 1


def test_runs_left_running_by_a_dead_worker_are_closed(store):
    now = dt.datetime.now(dt.UTC)
    dead = record_training_run(store.engine, project=2, started_at=now, status="running")
    done = record_training_run(store.engine, project=2, started_at=now,
                               status="finished", decision="rejected")  # fmt: skip
    close_interrupted_runs(store.engine)
    with reads.reading(store.engine) as conn:
        rows = {r["id"]: r for r in training_runs(conn, 2)}
    assert rows[dead]["status"] == "failed" and "interrupted" in rows[dead]["reason"]
    assert rows[done]["status"] == "finished" and rows[done]["decision"] == "rejected"
    assert json.loads(rows[done]["metrics_json"] or "{}") == {}
