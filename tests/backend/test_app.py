"""The protocol end to end: app -> Redis -> real worker processes -> model -> RLE."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from squeezesam.backend.images import decode
from squeezesam.backend.jobs import segment
from squeezesam.backend.labelstudio import Prompt
from squeezesam.backend.settings import Settings
from squeezesam.backend.worker import load_predictor
from squeezesam.models.predictor import Predictor

from .conftest import click_body, keypoint, rectangle, upload_ref


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    # what the test workers run: one thread, the inference options as the environment sets
    return load_predictor(model_path, replace(Settings.from_env(), model_threads=1))


def direct_mask(predictor, image, points, box=None) -> np.ndarray:
    """The mask computed in this process, without HTTP, Redis or workers."""
    prepared = predictor.prepare(decode(image.read_bytes(), 10**9))
    return segment(predictor, prepared, Prompt(tuple(points), box, None))[0]


def decoded(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def test_health_and_setup(client, label_config):
    health = client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    setup = client.post("/setup", json={"project": "1.1", "schema": label_config})
    assert setup.status_code == 200
    versions = client.get("/versions").json
    assert setup.json["model_version"] == versions["model_version"]


def test_click_rle_decodes_to_the_computed_mask(client, label_config, sample_images, predictor):
    image = sample_images[0]
    w, h = Image.open(image).size
    regions = [keypoint(50, 45, w, h, label="Pet"), keypoint(20, 80, w, h, positive=False)]
    response = client.post("/predict", json=click_body(label_config, upload_ref(image), regions))
    assert response.status_code == 200, response.json
    [item] = response.json["results"]
    version = client.post("/setup", json={"schema": label_config}).json["model_version"]
    assert item["model_version"] == version  # equal, or LS stores duplicates
    [region] = item["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Pet"]
    assert (region["original_width"], region["original_height"]) == (w, h)
    assert region["from_name"] == "tag" and region["to_name"] == "image"
    expected = direct_mask(predictor, image, [(50, 45, True), (20, 80, False)])
    assert np.array_equal(decoded(region), expected)
    assert 0.0 <= item["score"] <= 1.0


def test_rectangle_prompt_is_centre_click_clipped_to_box(client, label_config, sample_images):
    image = sample_images[1]
    w, h = Image.open(image).size
    box = rectangle(40, 40, 12, 10, w, h, label="Person")
    response = client.post("/predict", json=click_body(label_config, upload_ref(image), [box]))
    assert response.status_code == 200, response.json
    [region] = response.json["results"][0]["result"]
    mask = decoded(region)
    ys, xs = np.nonzero(mask)
    # everything inside the box, and the box centre is object
    assert xs.min() >= int(0.40 * w) and xs.max() < int(np.ceil(0.52 * w))
    assert ys.min() >= int(0.40 * h) and ys.max() < int(np.ceil(0.50 * h))
    assert mask[int(0.45 * h), int(0.46 * w)]
    assert region["value"]["brushlabels"] == ["Person"]


def test_two_annotators_at_once_get_their_own_masks(
    service_url, label_config, sample_images, predictor
):
    """Different images, clicked at the same time, through the real HTTP server."""
    jobs = []
    for image, (x, y) in zip(
        sample_images[2:6], [(30, 30), (70, 60), (50, 50), (25, 75)], strict=True
    ):
        w, h = Image.open(image).size
        body = click_body(label_config, upload_ref(image), [keypoint(x, y, w, h)])
        jobs.append((image, (x, y), body))

    def click(body):
        return requests.post(f"{service_url}/predict", json=body, timeout=60)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(click, [body for _, _, body in jobs]))
    for (image, (x, y), _), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        [region] = response.json()["results"][0]["result"]
        w, h = Image.open(image).size
        assert (region["original_width"], region["original_height"]) == (w, h)
        assert np.array_equal(decoded(region), direct_mask(predictor, image, [(x, y, True)]))


def test_image_is_fetched_once_per_task(client, label_config, sample_images, fake_ls):
    image = sample_images[6]
    w, h = Image.open(image).size
    ref = upload_ref(image, project=7)
    for x in (30, 50, 70):
        body = click_body(label_config, ref, [keypoint(x, 50, w, h)])
        assert client.post("/predict", json=body).status_code == 200
    assert sum(path == ref for path, _ in fake_ls.requests) == 1


def test_bulk_predict_one_item_per_task_bad_task_is_skipped(client, label_config, sample_images):
    tasks = [
        {"id": 1, "data": {"image": upload_ref(sample_images[0])}},
        {"id": 2, "data": {}},  # no image
        {"id": 3, "data": {"image": "/corrupt.jpg"}},
        {"id": 4, "data": {"image": upload_ref(sample_images[1])}},
    ]
    body = {"tasks": tasks, "label_config": label_config, "params": {"context": None}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 4  # counts must match, or Label Studio stores nothing
    version = client.get("/versions").json["model_version"]
    for item in results:
        assert item["model_version"] == version
    for good in (results[0], results[3]):
        assert isinstance(good["result"], list) and 0.0 <= good["score"] <= 1.0
    # bad tasks: no "result" key, so Label Studio stores nothing and a retry stays possible
    assert "result" not in results[1] and "result" not in results[2]
    assert "no image" in results[1]["skipped"] and "corrupt" in results[2]["skipped"]


def test_bulk_and_click_answers_record_the_served_regions(
    app, client, settings, label_config, sample_images
):
    """Every served brush region has an id, and the label store remembers it per task
    (what an annotation is later compared with; see test_served_regions.py)."""
    from squeezesam.backend.store import Store

    image = sample_images[0]
    tasks = [{"id": 71, "data": {"image": upload_ref(image)}}]
    body = {"tasks": tasks, "label_config": label_config, "params": {"context": None}}
    [item] = client.post("/predict", json=body).json["results"]
    w, h = Image.open(image).size
    click = click_body(label_config, upload_ref(image), [keypoint(50, 45, w, h)])
    click["tasks"][0]["id"] = 72
    [clicked] = client.post("/predict", json=click).json["results"]
    assert app.extensions["squeezesam.recorder"].flush()  # written after the answers
    store = Store.open(settings)
    try:
        for task, answer, kind in ((71, item, "preannotation"), (72, clicked, "click")):
            assert answer["result"] and all(len(r["id"]) == 10 for r in answer["result"])
            rows = store.served.served_for_task(task)
            assert {r["region_id"] for r in rows} == {r["id"] for r in answer["result"]}
            assert {(r["kind"], r["model_version"]) for r in rows} == {
                (kind, answer["model_version"])}  # fmt: skip
        # the same task again: the cached answer, the same ids, nothing new recorded
        [again] = client.post("/predict", json=body).json["results"]
        assert app.extensions["squeezesam.recorder"].flush()
        assert [r["id"] for r in again["result"]] == [r["id"] for r in item["result"]]
        assert len(store.served.served_for_task(71)) == len(item["result"])
    finally:
        store.close()
