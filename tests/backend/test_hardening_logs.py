"""No image query string in any log line of a worker (issue 20, item 9).

rq logs each job it starts with the job's description, the call with its arguments,
which starts with the image reference: a presigned URL's signature went to the log.
A real `squeezesam worker` on its own Redis runs a click whose image URL carries a
signature; its whole output must not contain it, at the default level and at DEBUG."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from squeezesam.backend.app import create_app
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.serve import redact_queries

from .conftest import WorkerPool, click_body, keypoint, make_settings

SIGNATURE = "X-Amz-Signature=cafe0123456789abcdefsecret"


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_worker_never_logs_an_image_query_string(
    level, model_path, fake_ls, label_config, sample_images, tmp_path
):
    redis_server = EmbeddedRedis(tmp_path / "redis", watchdog=False)
    settings = make_settings(redis_server.url, model_path, fake_ls, log_level=level)
    log_file = tmp_path / "worker.log"
    pool = WorkerPool(settings)
    try:
        with open(log_file, "w") as out:
            cmd = [sys.executable, "-m", "squeezesam.backend.cli", "worker",
                   "--queues", "interactive"]  # fmt: skip
            pool.procs.append(subprocess.Popen(cmd, env=pool.env, stdout=out, stderr=out))
            pool.wait_alive("interactive", 1)
            image = sample_images[0]
            w, h = Image.open(image).size
            ref = f"http://{fake_ls.other_host}/public/{image.name}?{SIGNATURE}&X-Amz-Date=1"
            body = click_body(label_config, ref, [keypoint(50, 50, w, h)])
            response = create_app(settings).test_client().post("/predict", json=body)
            assert response.status_code == 200, response.get_json()
            broken = dict(body, tasks=[dict(body["tasks"][0], data={"image": ref + "x"})])
            broken["tasks"][0]["data"]["image"] = ref.replace("/public/", "/public/missing-")
            failed = create_app(settings).test_client().post("/predict", json=broken)
            assert failed.status_code >= 400  # an error path logs the reference too
            assert "cafe0123" not in failed.get_data(as_text=True)
    finally:
        pool.stop()
        redis_server.close()
    text = log_file.read_text()
    if level == "DEBUG":  # rq logs each job at INFO, shown at DEBUG: by function only
        assert "segment_click(...)" in text, text[-3000:]
    # rq's job lines: not even the start of the image reference (its description used to
    # print it, cut after ~40 characters: a shorter host showed the signature)
    job_lines = [line for line in text.splitlines() if "segment_click" in line]
    assert not [line for line in job_lines if "public/" in line], job_lines
    # anywhere (urllib3's DEBUG lines, errors): no query string
    assert "cafe0123" not in text and "X-Amz" not in text, text[-3000:]


def test_redact_queries_keeps_the_place_drops_the_query():
    line = f"job segment_click(ClickJob(ref='https://b.example/x.jpg?{SIGNATURE}', n=1))"
    assert (
        redact_queries(line)
        == "job segment_click(ClickJob(ref='https://b.example/x.jpg?...', n=1))"
    )
    assert redact_queries("GET /tasks/1/presign/?fileuri=s3%3A//b/x HTTP/1.1") == (
        "GET /tasks/1/presign/?... HTTP/1.1"
    )
    assert redact_queries("no url here? fine") == "no url here? fine"
