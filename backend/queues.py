"""The queues: their names, the one way a job is enqueued, and who is alive to run it.

Three rq queues, one a kind of work:

* `interactive`: clicks (short, many, latency-critical; jobs.segment_click);
* `preannotate`: whole tasks and whole projects (jobs.preannotate_task, preannotate_job);
* `train`: fine-tuning, one run at a time (training_job.run_training_job).

`enqueue` is used by all three (dispatch.py for clicks and bulk tasks, preannotate.py,
training.py), so timeouts, result lifetimes and retries are set in one place.

Liveness: rq notices a dead worker only after job timeout + 60 s. A click cannot wait
that long, so each worker (worker.py) writes a heartbeat every HEARTBEAT_INTERVAL into a
per-queue sorted set (`alive_key`); `alive_workers` reads who beat within
HEARTBEAT_GRACE. A job STARTED on a worker that stopped beating is given back to its
queue by `requeue_abandoned` (rq's own retry), now instead of after rq's clean-up delay.
Nothing here loads the model: the web process imports this module, never worker.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

log = logging.getLogger(__name__)

INTERACTIVE = "interactive"
PREANNOTATE = "preannotate"
TRAIN = "train"
QUEUES = (INTERACTIVE, PREANNOTATE, TRAIN)
MODEL_QUEUES = (INTERACTIVE, PREANNOTATE)  # their workers hold the ONNX model

HEARTBEAT_INTERVAL = 1.0  # seconds between liveness beats
HEARTBEAT_GRACE = 5.0  # a worker silent for this long is dead


@functools.lru_cache(maxsize=64)  # a Queue per (connection, name): no Redis call to build
def queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection)


def enqueue(
    connection: redis.Redis,
    name: str,
    func: Callable[..., Any] | str,
    spec: Any,
    *,
    job_timeout: int,
    result_ttl: int,
    failure_ttl: int,
    ttl: int | None = None,
    retries: int = 0,
    description: str | None = None,
) -> Job:
    """Queue `func(spec)` on queue `name`. `retries`: how often rq runs the job again
    after a crash or a dead worker (0: never); `ttl`: how long it may wait unstarted."""
    return queue(connection, name).enqueue(
        func,
        spec,
        job_timeout=job_timeout,
        ttl=ttl,
        result_ttl=result_ttl,
        failure_ttl=failure_ttl,
        retry=Retry(max=retries) if retries else None,
        # rq's default description is the call with its arguments, which start with the
        # image reference (a presigned URL's signature): stored in Redis, shown by rq's
        # tools and logged. The function's name instead (issue 20, item 9).
        description=description or f"{_name(func)}(...)",
    )


def _name(func: Callable[..., Any] | str) -> str:
    if isinstance(func, str):
        return func
    return f"{func.__module__}.{func.__qualname__}"


def requeue_abandoned(connection: redis.Redis, job: Job) -> None:
    """rq's abandoned-job handling, now: retry if retries are left, else fail."""
    registry = StartedJobRegistry(job.origin, connection=connection)
    with connection.pipeline() as pipe:
        # drop the dead execution, or rq's clean-up would later "rescue" it again
        for entry in connection.zrange(registry.key, 0, -1):
            if entry.decode().split(":")[0] == job.id:
                pipe.zrem(registry.key, entry)
        if job.retries_left:
            log.warning("worker %s died during job %s: retrying", job.worker_name, job.id)
            job.retry(queue(connection, job.origin), pipe)
        else:
            log.error("worker %s died during job %s: no retries left", job.worker_name, job.id)
            _record_failure(job, "the worker died (no retries left)", pipe)
        pipe.execute()


def _record_failure(job: Job, reason: str, pipe: redis.client.Pipeline) -> None:
    """The job FAILED, in the failed registry with `reason` as its failure result: what
    rq 3's `job_lifecycle.record_job_failure` does, spelled so rq 2.x runs it too (the
    floor in pyproject.toml is tested by .ci/lowest_deps.sh)."""
    job.set_status(JobStatus.FAILED, pipeline=pipe)
    job._handle_failure(reason, pipe)


# --- liveness ----------------------------------------------------------------------------


def alive_key(queue_name: str) -> str:
    return f"squeezesam:alive:{queue_name}"


def beat(connection: redis.Redis, worker_name: str, queue_names: Iterable[str]) -> None:
    """One liveness beat of a worker on its queues."""
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zadd(alive_key(name), {worker_name: now})
        pipe.execute()


def leave(connection: redis.Redis, worker_name: str, queue_names: Iterable[str]) -> None:
    """A clean exit says so at once (no waiting out HEARTBEAT_GRACE)."""
    for name in queue_names:
        connection.zrem(alive_key(name), worker_name)


def alive_workers(connection: redis.Redis, queue_name: str) -> set[str]:
    """Names of workers on `queue_name` that beat within HEARTBEAT_GRACE."""
    cutoff = time.time() - HEARTBEAT_GRACE
    names = connection.zrangebyscore(alive_key(queue_name), cutoff, "+inf")
    return {n.decode() for n in names}


def worker_alive(connection: redis.Redis, job: Job) -> bool:
    """Whether the worker that started `job` still beats on the job's queue."""
    job.refresh()
    return bool(job.worker_name) and job.worker_name in alive_workers(connection, job.origin)
