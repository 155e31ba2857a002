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
