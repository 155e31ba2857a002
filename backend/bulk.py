"""Bulk `/predict` (no context): answer what is ready by the deadline, hand off the rest.

Label Studio sends one task when an annotator opens a task without a prediction (they
wait), and every selected task in one request on "Retrieve Predictions" (synchronous,
100 s timeout, nothing stored past it). So, per task, in task order:

* cached (pre-annotated earlier, e.g. after TASKS_CREATED): the cached item, at once;
* finished by PREANNOTATE_TIMEOUT: its item (regions, score, model_version);
* not finished: an item WITHOUT "result". Label Studio skips such an item (stores
  nothing for that task) while the counts still match, so the other tasks are stored.
  An empty `result` would be stored, and then Retrieve Predictions would skip the task
  as done for this model version: wrongly left empty. The task goes to the whole-project
  job (preannotate.py), which writes its prediction to Label Studio when it is ready;
* bad (no image, unreachable or corrupt image, crashed job): also an item without
  "result", plus a warning in the log and an entry in the project's error hash
  (`GET /preannotate/<project>` shows it). Nothing is stored, so a retry is possible.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from rq.job import Job

from squeezesam.backend import jobs, preannotate, results_cache, webhooks
from squeezesam.backend.dispatch import Dispatcher
from squeezesam.backend.labelstudio import PayloadError, ProjectConfig, task_image
from squeezesam.backend.queues import PREANNOTATE

log = logging.getLogger(__name__)

HANDED_OFF = 504  # the Outcome status of a task that ran out of time


def project_id_of(body: dict[str, Any], tasks: list[Any]) -> int | None:
    """Label Studio sends `"project": "<id>.<created timestamp>"`; tasks carry `project`.
    The body's value is read by the webhooks' one project parser; None when neither
    names a project."""
    try:
        return webhooks.project_id_of(body.get("project"))
    except PayloadError:
        pass
    for task in tasks:
        if isinstance(task, dict) and isinstance(task.get("project"), int):
            return task["project"]
    return None


def skipped(version: str, reason: str) -> str:
    """An item Label Studio skips: no "result" key (see the module doc)."""
    item = {"model_version": version, "score": 0.0, "skipped": reason}
    return json.dumps(item, separators=(",", ":"))


def _wait(d: Dispatcher, job: Job, deadline: float) -> jobs.Outcome:
    """One task's outcome; whatever goes wrong with its job is that task's failure (an
    item without result), never the whole request's 500. Redis out of reach is the
    request's (503 with Retry-After, app.py): no task could be answered."""
    try:
        return d.wait(job, deadline)
    except (redis.ConnectionError, redis.TimeoutError):
        raise
    except Exception as exc:
        log.exception("bulk /predict: waiting on job %s failed", job.id)
        return jobs.Outcome(500, error=f"the job failed: {type(exc).__name__}")


def answer(
    d: Dispatcher,
    tasks: list[Any],
    config: ProjectConfig,
    label_config: str,
    version: str,
    project_id: int | None,
) -> list[str]:
    """One JSON item per task, in task order, within PREANNOTATE_TIMEOUT."""
    settings = d.settings
    deadline = time.monotonic() + settings.preannotate_timeout
    items: list[str | jobs.Outcome | Job | None] = [None] * len(tasks)
    refs: dict[int, str] = {}
    for i, task in enumerate(tasks):
        try:
            refs[i] = task_image(task, config).ref
        except PayloadError as exc:
            items[i] = jobs.Outcome(exc.status, error=str(exc))
    keys = {i: results_cache.key(ref, version, config) for i, ref in refs.items()}
    for i, text in zip(keys, results_cache.get_many(d.redis, list(keys.values())), strict=True):
        items[i] = text
    for i, ref in refs.items():  # enqueue all first: the workers start while we wait
        if items[i] is None:
            spec = jobs.TaskJob(ref, config)
            items[i] = d.submit(
                PREANNOTATE, jobs.preannotate_task, spec, settings.preannotate_timeout
            )
    bodies: list[str] = []
    late: list[int] = []
    for task, item in zip(tasks, items, strict=True):
        outcome = _wait(d, item, deadline) if isinstance(item, Job) else item
        if isinstance(outcome, str):  # from the cache
            bodies.append(outcome)
            continue
        assert isinstance(outcome, jobs.Outcome)
        if outcome.ok:
            bodies.append(outcome.body)
            continue
        task_id = task.get("id") if isinstance(task, dict) else None
        if outcome.status == HANDED_OFF and isinstance(task_id, int):
            late.append(task_id)
            bodies.append(skipped(version, "not ready yet: written back to Label Studio later"))
            continue
        log.warning("pre-annotation of task %s failed: %s", task_id, outcome.error)
        if project_id is not None and task_id is not None:
            preannotate.record_error(d.redis, project_id, task_id, outcome.error)
        bodies.append(skipped(version, outcome.error))
    if late and project_id is not None:
        # the late tasks' jobs were cancelled unless started; a started one fills the
        # cache, which the project job then reads instead of running the model again
        queued = preannotate.enqueue_tasks(d, settings, project_id, late, label_config)
        log.info("bulk /predict: %d tasks not ready in time, %d handed off", len(late), queued)
    return bodies
