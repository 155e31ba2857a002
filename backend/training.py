"""Starting fine-tuning runs: enqueue on `train`, and the scheduler.

Four ways in, one queue: Label Studio's "Start Training" (START_TRAINING webhook, model.py),
the scheduler loop (`squeezesam train-scheduler`, started by `squeezesam serve`: every
TRAIN_INTERVAL s, each project with TRAIN_MIN_NEW_LABELS new labels since its last run),
`squeezesam train` (training_cli.py), and tests. What a run does is training_job.py.
Never two runs at once: one rq worker serves `train` (serve starts exactly one) and the
job itself takes a Redis lock (training_job.py), which also covers a second train worker
someone starts by hand.

A request for a project that already has a run queued or running returns that job
instead of queueing another (a burst of Start Training clicks makes one run). Nothing
here imports torch.
"""

from __future__ import annotations

import logging
import time

import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from squeezesam.backend.queues import (
    TRAIN,
    enqueue,
    queue,
    requeue_abandoned,
    worker_alive,
)
from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)

JOB_FUNC = "squeezesam.backend.training_job.run_training_job"
JOB_TIMEOUT = 6 * 3600  # a CPU run of a few thousand steps; rq kills a hung one
RESULT_TTL = 7 * 24 * 3600


def _pending(connection: redis.Redis) -> list[Job]:
    train = queue(connection, TRAIN)
    ids = list(train.get_job_ids()) + list(StartedJobRegistry(queue=train).get_job_ids())
    jobs = Job.fetch_many(ids, connection=connection)
    return [j for j in jobs if j is not None and j.func_name == JOB_FUNC]


def enqueue_training(
    connection: redis.Redis, project_id: int | None, steps: int | None = None,
    trigger: str = "manual",
) -> Job:  # fmt: skip
    """Queue a run (or return the one already queued/running for this project)."""
    # the job module imports torch only inside a run, never at import time
    from squeezesam.backend.training_job import TrainRequest

    for job in _pending(connection):
        request = job.args[0] if job.args else None
        if getattr(request, "project_id", object()) != project_id:
            continue
        if job.get_status() == JobStatus.STARTED and not worker_alive(connection, job):
            # its train worker died mid-run: give the run back to the queue now (rq's own
            # clean-up would wait for JOB_TIMEOUT); the next worker runs it again
            requeue_abandoned(connection, job)
            if job.get_status(refresh=True) != JobStatus.QUEUED:
                continue  # no retries left: it failed; queue a fresh run below
        log.info("training for project %s already %s: job %s", project_id,
                 job.get_status(refresh=True), job.id)  # fmt: skip
        return job
    job = enqueue(
        connection,
        TRAIN,
        JOB_FUNC,
        TrainRequest(project_id, steps, trigger),
        job_timeout=JOB_TIMEOUT,
        result_ttl=RESULT_TTL,
        failure_ttl=RESULT_TTL,
        retries=1,  # a worker killed mid-run: rq's abandoned-job clean-up runs it once more
        description=f"fine-tune project {project_id} ({trigger})",
    )
    log.info("queued fine-tuning of project %s (%s): job %s", project_id, trigger, job.id)
    return job


def schedule_once(connection: redis.Redis, settings: Settings) -> list[str]:
    """One scheduler tick: queue every project with enough new labels; returns job ids."""
    from squeezesam.backend.store import Store
    from squeezesam.backend.store.reads import new_labels_since_last_run, project_ids, reading

    if settings.train_min_new_labels <= 0:
        return []
    store = Store.open(settings)
    try:
        with reading(store.engine) as conn:
            due = [
                p
                for p in project_ids(conn)
                if new_labels_since_last_run(conn, p) >= settings.train_min_new_labels
            ]
    finally:
        store.close()
    return [enqueue_training(connection, p, trigger="schedule").id for p in due]


def scheduler_loop(settings: Settings, stop_after: int | None = None) -> None:
    from squeezesam.backend.redis_conn import connect

    connection = connect(settings)
    ticks = 0
    while stop_after is None or ticks < stop_after:
        try:
            queued = schedule_once(connection, settings)
            if queued:
                log.info("scheduler queued fine-tuning jobs %s", queued)
        except Exception as exc:  # a DB or Redis hiccup: try again next tick
            log.warning("training scheduler tick failed: %s", exc)
        ticks += 1
        if stop_after is None or ticks < stop_after:
            time.sleep(settings.train_interval)
