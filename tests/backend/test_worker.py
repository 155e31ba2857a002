"""Workers: a worker SIGKILLed mid-job loses no click; no worker gives a quick 503."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import pytest
import redis
import requests
from PIL import Image
from rq import Worker
from rq.registry import StartedJobRegistry
from werkzeug.serving import make_server

from squeezesam.backend.app import create_app
from squeezesam.backend.redis_conn import EmbeddedRedis

from .conftest import WorkerPool, click_body, keypoint, make_settings, upload_ref


@pytest.fixture()
def own_service(model_path, fake_ls):
    """A private Redis + 2 interactive workers + web server: this test kills workers."""
    server = EmbeddedRedis()
    settings = make_settings(server.url, model_path, fake_ls, interactive_timeout=40.0)
    pool = WorkerPool(settings)
    pool.start("interactive")
    pool.start("interactive")
    http = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    try:
        pool.wait_alive("interactive", 2)
        yield settings, pool, f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        pool.stop()
        server.close()


def test_killed_worker_job_is_retried_and_answered(
    own_service, fake_ls, label_config, sample_images
):
    settings, pool, url = own_service
    image = sample_images[3]
    w, h = Image.open(image).size
    ref = upload_ref(image, project=99)
    started = threading.Event()
    fake_ls.hang_once[ref] = started  # the first download hangs: the job is mid-flight
    body = click_body(label_config, ref, [keypoint(50, 50, w, h)])
    answer = {}

    def click():
        answer["response"] = requests.post(f"{url}/predict", json=body, timeout=60)

    thread = threading.Thread(target=click)
    t0 = time.monotonic()
    thread.start()
    assert started.wait(30), "the job never started"
    connection = redis.Redis.from_url(settings.redis_url)
    [job_id] = StartedJobRegistry("interactive", connection=connection).get_job_ids()
    from rq.job import Job

    job = Job.fetch(job_id, connection=connection)
    victim = next(w for w in Worker.all(connection=connection) if w.name == job.worker_name)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(60)
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["result"], "the retried click has its mask"
    assert time.monotonic() - t0 < 25  # detected within seconds, not rq's timeout + 60 s
    survivors = [p for p in pool.procs if p.poll() is None]
    assert len(survivors) == 1


def test_no_worker_answers_503_quickly(model_path, fake_ls, label_config, sample_images):
    server = EmbeddedRedis()
    try:
        settings = make_settings(server.url, model_path, fake_ls)
        client = create_app(replace(settings, interactive_timeout=30.0)).test_client()
        image = sample_images[0]
        w, h = Image.open(image).size
        t0 = time.monotonic()
        body = click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h)])
        response = client.post("/predict", json=body)
        assert response.status_code == 503 and "no worker" in response.json["error"]
        assert time.monotonic() - t0 < 15
    finally:
        server.close()
