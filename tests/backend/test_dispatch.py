"""dispatch.Dispatcher.wait: the early reply answers without waiting for rq's records."""

from __future__ import annotations

import threading
import time

import redis
from rq.job import Job

from squeezesam.backend import jobs
from squeezesam.backend.dispatch import Dispatcher
from squeezesam.backend.jobs import Outcome, reply_key
from squeezesam.backend.settings import Settings


def test_an_early_reply_answers_the_waiting_request_before_rq_has_a_result(redis_server):
    """A job's reply stream is read with rq's result stream: the outcome arrives as soon
    as the job writes it, although rq never records a result for this job (it is saved
    but in no queue, so no worker runs it; the reply is written by hand, as
    `jobs.reply_early` does)."""
    connection = redis.Redis.from_url(redis_server.url)
    dispatcher = Dispatcher(connection, Settings(redis_url=redis_server.url))
    job = Job.create(jobs.preannotate_task, args=(None,), connection=connection)
    job.save()
    sent = Outcome(200, '{"result":[]}')

    def reply() -> None:
        time.sleep(0.3)
        connection.xadd(reply_key(job.id), sent.to_fields(), maxlen=1)

    threading.Thread(target=reply, daemon=True).start()
    t0 = time.monotonic()
    got = dispatcher.wait(job, time.monotonic() + 30)
    assert got == sent
    assert time.monotonic() - t0 < 3.0  # well before the deadline
    connection.delete(job.key)  # not job.delete(): rq 2.0 (the floor) wants a status there


def test_an_error_outcome_round_trips_through_the_reply_fields():
    outcome = Outcome(422, error="the image is corrupt: cannot identify image file")
    fields = {k.encode(): v.encode() for k, v in outcome.to_fields().items()}
    assert Outcome.from_fields(fields) == outcome


def test_a_no_op_job_round_trips_through_a_real_worker(settings, workers):
    """`jobs.ping` (the benchmark's queue floor) runs on an interactive worker and its
    early reply reaches the waiting caller; it is rq's own path, with no model work."""
    dispatcher = Dispatcher(redis.Redis.from_url(settings.redis_url), settings)
    outcome = dispatcher.run("interactive", jobs.ping, None, 30)
    assert outcome == Outcome(200, "{}")


def test_a_job_whose_key_expired_unstarted_is_not_ready_never_a_500(redis_server):
    """Issue 20, item 2: a job that no worker started within its ttl loses its key in
    Redis; rq's `get_status` then raises InvalidJobOperation, which used to escape as a
    500 for the whole bulk request. It is a task that was not ready in time: 504, which
    bulk /predict hands off (an item without result)."""
    from squeezesam.backend.queues import PREANNOTATE, beat, enqueue, leave

    connection = redis.Redis.from_url(redis_server.url)
    dispatcher = Dispatcher(connection, Settings(redis_url=redis_server.url))
    queue_name = f"{PREANNOTATE}-expiry-test"
    beat(connection, "a-busy-worker", [queue_name])  # alive, just busy: no 503 path
    job = enqueue(connection, queue_name, jobs.ping, None, job_timeout=10, result_ttl=60,
                  failure_ttl=60, ttl=1)  # fmt: skip
    stop = threading.Event()

    def keep_beating() -> None:
        while not stop.wait(0.5):
            beat(connection, "a-busy-worker", [queue_name])

    threading.Thread(target=keep_beating, daemon=True).start()
    try:
        outcome = dispatcher.wait(job, time.monotonic() + 3.0)
    finally:
        stop.set()
        leave(connection, "a-busy-worker", [queue_name])
    assert outcome.status == 504, outcome
    assert "expired" in (outcome.error or "")
