"""Whole-project pre-annotation: tasks -> rq jobs on `preannotate` -> predictions in LS.

Used by `squeezesam preannotate --project ID`, `POST /preannotate`, the TASKS_CREATED
webhook and a bulk `/predict` that ran out of time. The work is split into chunk jobs
(PREANNOTATE_CHUNK tasks each); each task in a chunk is: fetch the task from Label
Studio, find its objects (or take them from the result cache), write one prediction.

* Idempotent and restartable: a Redis set of done task ids per (project, model version)
  is checked before the work and updated after the write; in between, Label Studio's
  own predictions of the task are re-checked, so a crash between the write and the
  set update does not write twice. A restart simply enqueues the project again.
* Label Studio down or slow: every call is retried with bounded exponential backoff
  (ls_client.py); a chunk that still fails raises, rq retries it, and its tasks stay
  not-done, so the next run picks them up: nothing is lost.
* Not flooding Label Studio: one chunk runs per preannotate worker, its calls one after
  the other, so in-flight requests are bounded by the number of preannotate workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job

from squeezesam.backend import progress, project_params
from squeezesam.backend.queues import PREANNOTATE, enqueue
from squeezesam.backend.registry import model_version
from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)


def done_key(project_id: int, version: str) -> str:
    return f"squeezesam:preannotate-done:{project_id}:{version}"


def errors_key(project_id: int) -> str:
    """Hash task id -> last error of that task (bad image...), for the dashboard/CLI."""
    return f"squeezesam:preannotate-errors:{project_id}"


@dataclass(frozen=True)
class ChunkJob:
    project_id: int
    task_ids: tuple[int, ...]
    label_config: str | None = None  # None: the job reads it from Label Studio


@dataclass(frozen=True)
class PlanJob:
    project_id: int
    limit: int | None = None


def join_progress(conn: redis.Redis, project_id: int, count: int, version: str) -> None:
    """Add tasks to the project's running progress (progress.py), or start a new run.

    A run still going (no finished_at, not all done) grows by `count`, so tasks imported
    during a whole-project run (TASKS_CREATED) show up in the same progress bar.
    """
    key = progress.progress_key(project_id)
    running = [p for p in progress.read_progress(conn, project_id) if p.state == "running"]
    if running:
        conn.hincrby(key, progress.F_TOTAL, count)
    else:
        progress.progress_start(conn, project_id, count, version)


def _connection(connection_or_dispatcher: Any) -> redis.Redis:
    return getattr(connection_or_dispatcher, "redis", connection_or_dispatcher)


def _unique_ints(values: Iterable[Any]) -> list[int]:
    seen: dict[int, None] = {}
    for value in values:
        seen.setdefault(int(value), None)
    return list(seen)


def enqueue_tasks(
    connection_or_dispatcher: Any,
    settings: Settings,
    project_id: int,
    task_ids: list[int],
    label_config: str | None = None,
) -> int:
    """Queue these tasks of a project for pre-annotation; returns how many were queued.

    For TASKS_CREATED and for bulk `/predict` tasks that ran out of time. Tasks already
    done for the current model version are left out; queuing a task twice is harmless
    (the job re-checks before writing). Redis only, milliseconds: fits in Label
    Studio's 1 s webhook timeout. The tasks join a running progress, if any.
    """
    conn = _connection(connection_or_dispatcher)
    version = model_version(settings)
    return enqueue_ids(conn, settings, project_id, task_ids, label_config, version)


def enqueue_ids(
    conn: redis.Redis,
    settings: Settings,
    project_id: int,
    task_ids: Iterable[Any],
    label_config: str | None,
    version: str,
    new_run: bool = False,
) -> int:
    """Chunk jobs for the not-done tasks; `new_run` restarts the progress counters.
    Nothing is queued for a project whose Extra params say `zero_click: false`."""
    params = project_params.load(conn, project_id)
    if params is not None and not params.zero_click:
        log.info("project %s: %s; nothing queued", project_id, project_params.OFF)
        return 0
    ids = _unique_ints(task_ids)
    if ids:
        done = conn.smismember(done_key(project_id, version), ids)
        ids = [t for t, is_done in zip(ids, done, strict=True) if not is_done]
    if new_run:
        progress.progress_start(conn, project_id, len(ids), version)
        if not ids:
            progress.progress_finish(conn, project_id)
    elif ids:
        join_progress(conn, project_id, len(ids), version)
    size = max(1, settings.preannotate_chunk)
    for start in range(0, len(ids), size):
        chunk = tuple(ids[start : start + size])
        enqueue(
            conn,
            PREANNOTATE,
            "squeezesam.backend.preannotate_job.run_chunk",
            ChunkJob(int(project_id), chunk, label_config),
            # the model takes well under a second per task; Label Studio backoff may
            # add PREANNOTATE_RETRY_SECONDS per call: the job timeout allows for both
            job_timeout=int(60 + len(chunk) * 10 + 3 * settings.preannotate_retry_seconds),
            result_ttl=600,
            failure_ttl=7 * 24 * 3600,
            retries=settings.job_retries,
            description=f"preannotate project {project_id}: {len(chunk)} tasks",
        )
    return len(ids)


def start_project(
    connection_or_dispatcher: Any, settings: Settings, project_id: int, limit: int | None = None
) -> Job:
    """Queue the planning job of a whole-project run (lists tasks, queues chunks)."""
    conn = _connection(connection_or_dispatcher)
    return enqueue(
        conn,
        PREANNOTATE,
        "squeezesam.backend.preannotate_job.plan_project",
        PlanJob(int(project_id), limit),
        job_timeout=int(600 + 3 * settings.preannotate_retry_seconds),  # big projects list slowly
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        description=f"plan pre-annotation of project {project_id}",
    )


def record_error(conn: redis.Redis, project_id: int, task_id: Any, message: str) -> None:
    key = errors_key(project_id)
    with conn.pipeline(transaction=False) as pipe:
        pipe.hset(key, str(task_id), message[:500])
        pipe.expire(key, progress.PREANNOTATE_TTL)
        pipe.execute()


def run_status(conn: redis.Redis, project_id: int, max_errors: int = 50) -> dict[str, Any]:
    """Progress (progress.py) + tasks per second + the latest task errors, as JSON."""
    runs = progress.read_progress(conn, project_id)
    body: dict[str, Any] = {"project": project_id, "state": "none"}
    if runs:
        run = runs[0]
        body = run.as_row() | {"project": project_id}
        end = run.finished_at or run.updated_at
        elapsed = (end - run.started_at) if end and run.started_at else 0.0
        body["rate"] = round(run.done / elapsed, 2) if elapsed > 0 else 0.0
    errors = conn.hgetall(errors_key(project_id))
    items = sorted(((_as_id(k.decode()), v.decode()) for k, v in errors.items()), reverse=True)
    body["errors"] = [{"task": t, "error": e} for t, e in items[:max_errors]]
    return body


def _as_id(text: str) -> int:
    return int(text) if text.lstrip("-").isdigit() else -1
