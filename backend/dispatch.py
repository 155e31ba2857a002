"""The web side of the queue: enqueue a job and wait for its outcome, never forever.

Waiting reads the job's early reply stream (jobs.reply_key) and rq's result stream
(`rq:results:<job id>`) in one XREAD BLOCK, so an answer wakes the web process at
once, with no polling delay: the reply as soon as the job has its outcome, rq's result
(also failures) after rq's bookkeeping. The block is cut into short
slices; between slices we check that the job is still in good hands:

* STARTED on a worker whose liveness heartbeat stopped (queues.py): the worker died
  mid-job (SIGKILL, OOM). The job is given back to its queue with rq's own retry
  (`queues.requeue_abandoned`, counting down the retries it was enqueued with), and we
  keep waiting.
  rq's own abandoned-job clean-up does the same for jobs nobody waits for, but only
  after job timeout + 60 s.
* QUEUED with no live worker on its queue for NO_WORKER_GRACE: answer 503 quickly
  instead of hanging until the deadline.
* gone (its key expired before a worker started it: a queue longer than the wait):
  504, like the deadline; bulk /predict hands the task off (bulk.py).

At the deadline the job is cancelled, so a click nobody waits for any more is not run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from squeezesam.backend.jobs import Outcome, reply_key
from squeezesam.backend.queues import alive_workers, enqueue, requeue_abandoned
from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)

SLICE_SECONDS = 0.5  # how often a waiting request checks on its job's worker
NO_WORKER_GRACE = 5.0


class Dispatcher:
    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.redis = connection
        self.settings = settings

    def submit(self, queue: str, func: Callable[..., Outcome], spec: Any, timeout: float) -> Job:
        return enqueue(
            self.redis,
            queue,
            func,
            spec,
            job_timeout=max(int(timeout) + 5, 10),  # a hung model pass gets killed
            ttl=max(math.ceil(timeout), 1),  # not started by then: nobody waits any more
            result_ttl=60,
            failure_ttl=600,
            retries=self.settings.job_retries,
        )

    def run(self, queue: str, func: Callable[..., Outcome], spec: Any, timeout: float) -> Outcome:
        job = self.submit(queue, func, spec, timeout)
        return self.wait(job, time.monotonic() + timeout)

    def wait(self, job: Job, deadline: float) -> Outcome:
        key, early = Result.get_key(job.id), reply_key(job.id)
        streams = {early: b"0-0", key: b"0-0"}
        no_worker_since: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            # past the deadline: one last non-blocking read (a bulk request waits on its
            # jobs one after the other, so later ones may well be finished by now)
            block_ms = int(min(remaining, SLICE_SECONDS) * 1000) if remaining > 0 else 0
            response = self.redis.xread(streams, block=block_ms if block_ms > 0 else None)
            entries = [(name, e) for name, stream in response or [] for e in stream]
            for raw_name, (entry_id, payload) in entries:
                name = raw_name.decode()
                streams[name] = entry_id
                if name == early:  # (the reply expires with REPLY_TTL)
                    return Outcome.from_fields(payload)
                result = Result.restore(job.id, entry_id.decode(), payload, connection=self.redis)
                if result.type == Result.Type.SUCCESSFUL:
                    return result.return_value
                if result.type in (Result.Type.FAILED, Result.Type.STOPPED):
                    return Outcome(500, error=f"the job failed: {_last_line(result.exc_string)}")
            if remaining <= 0:
                self._cancel(job)
                return Outcome(504, error=f"no answer within {self._budget(job)} s (job timed out)")
            if response:
                continue
            status, no_worker_since = self._check(job, no_worker_since)
            if status is not None:
                return status

    def _check(
        self, job: Job, no_worker_since: float | None
    ) -> tuple[Outcome | None, float | None]:
        """Between slices: rescue a job whose worker died; fail fast without workers."""
        try:
            status = job.get_status(refresh=True)
            live = alive_workers(self.redis, job.origin)
            if status == JobStatus.STARTED:
                job.refresh()
        except (NoSuchJobError, InvalidJobOperation):
            # its key expired: not started within its ttl (the queue was longer than the
            # wait), or its result outlived; rq raises either. Not ready: like the deadline
            return Outcome(504, error="no answer in time (the job expired unstarted)"), None
        if status == JobStatus.STARTED:
            if job.worker_name and job.worker_name not in live:
                requeue_abandoned(self.redis, job)
            return None, None
        if status == JobStatus.FAILED:
            return Outcome(500, error="the job failed"), None
        if status == JobStatus.QUEUED and not live:
            now = time.monotonic()
            if no_worker_since is None:
                return None, now
            if now - no_worker_since > NO_WORKER_GRACE:
                self._cancel(job)
                return Outcome(503, error=f"no worker is serving the {job.origin!r} queue"), None
            return None, no_worker_since
        return None, None

    def _cancel(self, job: Job) -> None:
        try:
            job.cancel()
        except Exception as exc:  # already finished or gone: nothing to cancel
            log.debug("cancel %s: %s", job.id, exc)

    @staticmethod
    def _budget(job: Job) -> int:
        return int(job.ttl or 0)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
