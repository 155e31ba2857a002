"""Cloud-storage tasks (`s3://`, `gs://`, `azure-blob://`) resolved through Label Studio's
presign endpoint: clicks, bulk requests, whole-project runs and the training export,
against the stand-in Label Studio (ls_standin.py: token required, 303 to a bucket on
another origin, or the bytes), with real Redis, real workers and the shipped model."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import redis
from PIL import Image

from squeezesam.backend import cloud_storage, export_labels, webhooks
from squeezesam.backend.app import create_app
from squeezesam.backend.images import Fetcher, ImageError
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.store import Store

from .conftest import WorkerPool, keypoint, load_capture, make_settings
from .ls_standin import TOKEN
from .test_preannotate import CONFIG, run_project

SCHEMES = ["s3", "gs", "azure-blob"]
_projects = iter(range(20_000, 30_000))


@pytest.fixture(scope="module")
def cloud_settings(model_path, fake_ls, standin):
    server = EmbeddedRedis()  # its own Redis and workers: they talk to the stand-in
    yield make_settings(
        server.url, model_path, fake_ls, label_studio_url=standin.url,
        label_studio_api_key=TOKEN, image_allowed_hosts=(standin.bucket_host,),
        preannotate_chunk=2, preannotate_retry_seconds=20.0,
    )  # fmt: skip
    server.close()


@pytest.fixture(scope="module")
def cloud_pool(cloud_settings):
    pool = WorkerPool(cloud_settings)
    pool.start("interactive")
    pool.start("preannotate")
    pool.wait_alive("interactive", 1)
    pool.wait_alive("preannotate", 1)
    yield pool
    pool.stop()


@pytest.fixture(scope="module")
def cloud_client(cloud_settings, cloud_pool):
    return create_app(cloud_settings).test_client()


def cloud_task(standin, image, scheme: str) -> dict:
    project = next(_projects)
    [task_id] = standin.add_cloud_tasks(project, [f"{scheme}://team-bucket/photos/{image.name}"])
    return standin.tasks[task_id] | {"predictions": []}


def click(task: dict, image, x: float = 50, y: float = 45) -> dict:
    w, h = Image.open(image).size
    return {"tasks": [task], "project": f"{task['project']}.1", "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(x, y, w, h)]}}}  # fmt: skip


# --- the reference --------------------------------------------------------------------------


def test_cloud_uri_becomes_the_tasks_presign_path_encoded_like_the_sdk():
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
        encode_presign_fileuri,
        is_cloud_storage_uri,
    )

    for uri in ("s3://b/x y.jpg", "gs://b/ü.jpg", "azure-blob://c/a/b.jpg"):
        assert cloud_storage.is_cloud_uri(uri) and is_cloud_storage_uri(uri)
        path = cloud_storage.task_ref(uri, 7)
        assert path == f"/tasks/7/presign/?fileuri={encode_presign_fileuri(uri)}"
        assert cloud_storage.cloud_uri_of(path) == uri
    assert cloud_storage.task_ref("/data/upload/1/x.jpg", 7) == "/data/upload/1/x.jpg"
    with pytest.raises(cloud_storage.CloudRefError, match="task id"):
        cloud_storage.task_ref("s3://b/x.jpg", None)


# --- clicks and bulk requests --------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_click_on_a_cloud_storage_task_gets_a_mask(scheme, standin, cloud_client, sample_images):
    image = sample_images[0]
    task = cloud_task(standin, image, scheme)
    standin.bucket_requests.clear()
    response = cloud_client.post("/predict", json=click(task, image))
    assert response.status_code == 200, response.json
    [region] = response.json["results"][0]["result"]
    assert region["type"] == "brushlabels" and region["value"]["rle"]
    # the presigned bucket URL got the image without Label Studio's token
    [(path, auth)] = standin.bucket_requests
    assert path == f"/bucket/{scheme}/{image.name}" and auth == ""


def test_click_when_label_studio_proxies_the_bytes(standin, cloud_client, sample_images):
    image = sample_images[1]
    task = cloud_task(standin, image, "s3")
    standin.presign, before = False, len(standin.bucket_requests)
    try:
        response = cloud_client.post("/predict", json=click(task, image, 40, 40))
    finally:
        standin.presign = True
    assert response.status_code == 200, response.json
    assert response.json["results"][0]["model_version"]
    assert len(standin.bucket_requests) == before  # no bucket: Label Studio sent the bytes


def test_bulk_predict_on_cloud_storage_tasks_gets_masks(standin, cloud_client, sample_images):
    tasks = [cloud_task(standin, image, scheme)
             for image, scheme in zip(sample_images[:3], SCHEMES, strict=True)]  # fmt: skip
    body = {"tasks": tasks, "project": f"{tasks[0]['project']}.1", "label_config": CONFIG,
            "params": {"context": None}}  # fmt: skip
    response = cloud_client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json["results"]
    assert all("result" in item for item in results), results  # none skipped
    assert sum(len(item["result"]) for item in results) >= 1


def test_whole_project_run_on_cloud_storage_tasks(standin, cloud_settings, cloud_pool,
                                                  sample_images):  # fmt: skip
    project = next(_projects)
    uris = [f"{s}://team-bucket/{p.name}" for s, p in zip(SCHEMES, sample_images[3:6], strict=True)]
    ids = standin.add_cloud_tasks(project, uris)
    conn = redis.Redis.from_url(cloud_settings.redis_url)
    status = run_project(conn, cloud_settings, project)
    assert (status["done"], status["failed"]) == (3, 0), status
    assert all(len(standin.predictions_of(t)) == 1 for t in ids)


# --- the clear errors ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["wrong-token", ""])
def test_wrong_or_missing_token_is_a_clear_error(key, standin, cloud_settings, sample_images):
    task = cloud_task(standin, sample_images[0], "s3")
    fetcher = Fetcher(dataclasses.replace(cloud_settings, label_studio_api_key=key))
    ref = cloud_storage.task_ref(task["data"]["image"], task["id"])
    with pytest.raises(ImageError) as caught:
        fetcher.fetch(ref)
    error = cloud_storage.explain(caught.value, ref)
    assert error.status == 502
    assert str(error).startswith(f"cloud-storage image {task['data']['image']} (via Label")
    assert "answered HTTP 401" in str(error) and "fileuri" not in str(error)


def test_unknown_scheme_is_a_clear_422(standin, cloud_client, sample_images):
    task = cloud_task(standin, sample_images[0], "s3")
    task["data"]["image"] = "ftp://team-bucket/x.jpg"
    response = cloud_client.post("/predict", json=click(task, sample_images[0]))
    assert response.status_code == 422
    assert "scheme 'ftp' is not allowed" in response.json["error"]
    assert "s3/gs/azure-blob" in response.json["error"]


def test_failed_click_logs_one_warning_naming_the_reason(
    standin, cloud_client, sample_images, caplog
):
    task = cloud_task(standin, sample_images[0], "gs")
    task = task | {"id": 99_999}  # Label Studio knows no such task: its presign answers 404
    with caplog.at_level(logging.WARNING, logger="squeezesam.backend.model"):
        response = cloud_client.post("/predict", json=click(task, sample_images[0]))
    assert response.status_code == 404
    assert response.json["error"].startswith(f"cloud-storage image {task['data']['image']}")
    [line] = [r.getMessage() for r in caplog.records if r.name == "squeezesam.backend.model"]
    assert line.startswith("click on task 99999 failed (404): cloud-storage image gs://")
    assert "answered HTTP 404" in line and "?..." in line and "fileuri=" not in line


# --- the training export ------------------------------------------------------------------------


def test_training_export_fetches_cloud_images_through_presign(
    standin, cloud_settings, sample_images, tmp_path
):
    from squeezesam.backend.training_job import _image_loader

    image = sample_images[2]
    task = cloud_task(standin, image, "azure-blob")
    w, h = Image.open(image).size
    payload = copy.deepcopy(load_capture("62_*__ml_webhook.json")[0]["request"]["body"])
    region = copy.deepcopy(payload["annotation"]["result"][0])
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    region.update(original_width=w, original_height=h)
    region["value"].update(rle=mask2rle(mask), brushlabels=["Person"])
    payload["annotation"].update(id=5000 + task["id"], task=task["id"], result=[region])
    payload["task"] = payload["task"] | {"id": task["id"], "data": task["data"]}
    payload["project"] = payload["project"] | {"id": task["project"]}
    store = Store(tmp_path / "data")
    try:
        webhooks.handle_event(store, payload)
        standin.bucket_requests.clear()
        result = export_labels.export_folder(store, tmp_path / "out", _image_loader(cloud_settings))
    finally:
        store.close()
    assert result["failed"] == [] and result["images"] == 1, result
    assert standin.bucket_requests == [(f"/bucket/azure-blob/{image.name}", "")]
