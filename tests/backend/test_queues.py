"""queues.py: one enqueue for every queue, liveness beats, a dead worker's job requeued."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from squeezesam.backend import jobs, queues


@pytest.fixture()
def connection(redis_server):
    return redis.Redis.from_url(redis_server.url)


def fresh_queue() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"  # no worker of the session serves it


def test_enqueue_sets_timeouts_lifetimes_and_retries(connection):
    name = fresh_queue()
    job = queues.enqueue(connection, name, jobs.ping, None, job_timeout=30, result_ttl=60,
                         failure_ttl=600, ttl=5, retries=2, description="a ping")  # fmt: skip
    fetched = Job.fetch(job.id, connection=connection)
    assert fetched.origin == name and fetched.get_status() == JobStatus.QUEUED
    assert (fetched.timeout, fetched.result_ttl, fetched.failure_ttl, fetched.ttl) == (
        30, 60, 600, 5)  # fmt: skip
    assert fetched.retries_left == 2 and fetched.description == "a ping"
    once = queues.enqueue(connection, name, "squeezesam.backend.jobs.ping", None,
                          job_timeout=30, result_ttl=60, failure_ttl=600)  # fmt: skip
    assert Job.fetch(once.id, connection=connection).retries_left is None  # never retried


def test_a_worker_is_alive_while_it_beats_and_gone_when_it_leaves(connection):
    name = fresh_queue()
    queues.beat(connection, "w1", [name])
    assert queues.alive_workers(connection, name) == {"w1"}
    queues.leave(connection, "w1", [name])
    assert queues.alive_workers(connection, name) == set()
    stale = time.time() - queues.HEARTBEAT_GRACE - 1
    connection.zadd(queues.alive_key(name), {"w2": stale})
    assert queues.alive_workers(connection, name) == set()  # silent too long: dead


@pytest.mark.parametrize(("retries", "status"), [(1, JobStatus.QUEUED), (0, JobStatus.FAILED)])
def test_a_dead_workers_job_is_requeued_while_retries_are_left(connection, retries, status):
    name = fresh_queue()
    job = queues.enqueue(connection, name, jobs.ping, None, job_timeout=30, result_ttl=60,
                         failure_ttl=600, retries=retries)  # fmt: skip
    queues.queue(connection, name).remove(job.id)  # as if a worker had taken it
    job.set_status(JobStatus.STARTED)
    job.worker_name = "dead-worker"
    job.save()
    registry = StartedJobRegistry(name, connection=connection)
    connection.zadd(registry.key, {f"{job.id}:exec1": time.time() + 60})
    assert not queues.worker_alive(connection, job)
    queues.requeue_abandoned(connection, job)
    assert job.get_status(refresh=True) == status
    assert not [e for e in connection.zrange(registry.key, 0, -1) if e.decode().startswith(job.id)]
    assert (job.id in queues.queue(connection, name).get_job_ids()) == (status == JobStatus.QUEUED)


def test_a_jobs_description_names_its_function_never_its_image_reference(redis_server):
    """Issue 20, item 9: rq's default description is the call with its arguments (the
    image reference first, a presigned URL's signature included); it is stored in Redis
    and shown by rq's tools. enqueue gives the function's name only."""
    from squeezesam.backend.labelstudio import parse_label_config

    connection = redis.Redis.from_url(redis_server.url)
    ref = "https://bucket.example/cat.jpg?X-Amz-Signature=cafe0123secret"
    config = parse_label_config(
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Person"/></BrushLabels></View>'
    )
    job = queues.enqueue(connection, fresh_queue(), jobs.preannotate_task,
                         jobs.TaskJob(ref, config), job_timeout=10, result_ttl=10,
                         failure_ttl=10, ttl=5)  # fmt: skip
    try:
        stored = Job.fetch(job.id, connection=connection)
        assert stored.description == "squeezesam.backend.jobs.preannotate_task(...)"
        assert b"bucket.example" not in connection.hget(job.key, "description")
    finally:
        job.delete()
