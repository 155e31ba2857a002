"""A click on a pre-annotated object refines that object; labels of zero-click objects."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from squeezesam.backend.images import decode
from squeezesam.backend.jobs import segment
from squeezesam.backend.labelstudio import (
    ProjectConfig,
    Prompt,
    brush_result,
    object_label,
    parse_label_config,
    task_regions,
)
from squeezesam.backend.settings import Settings
from squeezesam.backend.worker import load_predictor
from squeezesam.models.objects import find_objects
from squeezesam.models.predictor import Predictor

from .conftest import click_body, keypoint, upload_ref

TWO = ProjectConfig("image", "image", "tag", ("Person", "Pet"))
ONE = ProjectConfig("image", "image", "tag", ("Thing",))
PROBS = {"person": 0.8, "pet": 0.1, "other": 0.1}


def test_object_labels_follow_the_config():
    assert object_label("person", PROBS, 0.9, TWO) == ("Person", pytest.approx(0.72))
    assert object_label("pet", PROBS, 0.9, TWO) == ("Pet", pytest.approx(0.09))
    assert object_label("other", PROBS, 0.9, TWO) is None  # never a person or a pet
    assert object_label("other", PROBS, 0.9, ONE) == ("Thing", 0.9)  # the only label
    three = ProjectConfig("image", "image", "tag", ("Person", "Pet", "Other"))
    assert object_label("other", PROBS, 0.5, three) == ("Other", pytest.approx(0.05))


def decoded(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def test_task_regions_prefer_the_annotators_work():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 5:10] = True
    region = brush_result(mask, "Pet", 0.5, TWO)
    person = brush_result(mask, "Person", 0.5, TWO)
    task = {"predictions": [{"result": [region]}], "drafts": [{"result": [person]}],
            "annotations": [{"result": [{"type": "keypointlabels", "value": {}}]}]}  # fmt: skip
    found = task_regions(task, TWO)
    assert [r.label for r in found] == ["Person", "Pet"]
    assert task_regions({"predictions": [{"result": [{"type": "brushlabels"}]}]}, TWO) == ()


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    # what the test workers run: one thread, focus view and zoom-in as the environment sets
    return load_predictor(model_path, replace(Settings.from_env(), model_threads=1))


@pytest.fixture(scope="module")
def preannotated(predictor, sample_images, label_config):
    """(image, its zero-click region as Label Studio stores it, the object's clicks)."""
    config = parse_label_config(label_config)
    for image in sample_images:
        prepared = predictor.prepare(decode(image.read_bytes(), 10**9))
        for found in find_objects(predictor, prepared):
            labelled = object_label(found.label, found.class_probs, found.score, config)
            if labelled and found.mask.mean() < 0.6:  # leaves background to click on
                return image, brush_result(found.mask, *labelled, config), found.clicks[0]
    pytest.skip("the model found no labelled object in the sample images")


def test_first_click_on_a_preannotated_object_refines_it(
    client, label_config, predictor, preannotated
):
    image, region, inside = preannotated
    w, h = Image.open(image).size
    body = click_body(label_config, upload_ref(image), [])
    body["tasks"][0]["predictions"] = [{"result": [region], "model_version": "x"}]
    other = "Person" if region["value"]["brushlabels"] == ["Pet"] else "Pet"
    x, y = 100 * inside.x / w, 100 * inside.y / h
    body["params"]["context"]["result"] = [keypoint(x, y, w, h, label=other)]
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    [refined] = response.json["results"][0]["result"]
    assert refined["value"]["brushlabels"] == region["value"]["brushlabels"]  # label kept
    before = decoded(region)
    prepared = predictor.prepare(decode(image.read_bytes(), 10**9))
    expected, _ = segment(predictor, prepared, Prompt(((x, y, True),), None, other), before)
    assert np.array_equal(decoded(refined), expected)  # the region was the previous mask
    after = decoded(refined)
    assert (after & before).sum() / (after | before).sum() > 0.7  # not thrown away


def test_corrective_click_on_a_preannotated_object_is_zoomed_in(
    client, label_config, predictor, preannotated
):
    assert predictor.zoom_in  # SQUEEZESAM_ZOOM_IN's default, as the test workers run
    image, region, inside = preannotated
    w, h = Image.open(image).size
    before = decoded(region)
    ys, xs = np.nonzero(~before)  # a negative click on the background nearest the object
    nearest = np.argmin((ys - inside.y) ** 2 + (xs - inside.x) ** 2)
    pos = (100 * inside.x / w, 100 * inside.y / h)
    neg = (100 * (xs[nearest] + 0.5) / w, 100 * (ys[nearest] + 0.5) / h)
    body = click_body(label_config, upload_ref(image), [
        keypoint(*pos, w, h), keypoint(*neg, w, h, positive=False)])  # fmt: skip
    body["tasks"][0]["predictions"] = [{"result": [region], "model_version": "x"}]
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    [refined] = response.json["results"][0]["result"]
    prepared = predictor.prepare(decode(image.read_bytes(), 10**9))
    prompt = Prompt(((*pos, True), (*neg, False)), None, None)
    zoomed, _ = segment(predictor, prepared, prompt, before)
    # the workers' predictor with zoom-in alone turned off: every other option as served
    plain = load_predictor(
        predictor.model_path, replace(Settings.from_env(), model_threads=1, zoom_in=False)
    )
    whole, _ = segment(plain, prepared, prompt, before)
    assert not np.array_equal(zoomed, whole)  # the two paths differ on this object
    assert np.array_equal(decoded(refined), zoomed)  # and the service took the zoomed one


def test_click_outside_every_region_starts_a_new_object(
    client, label_config, predictor, preannotated
):
    image, region, _ = preannotated
    w, h = Image.open(image).size
    ys, xs = np.nonzero(~decoded(region))
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    px, py = 100 * (x + 0.5) / w, 100 * (y + 0.5) / h
    body = click_body(label_config, upload_ref(image), [keypoint(px, py, w, h, label="Pet")])
    body["tasks"][0]["predictions"] = [{"result": [region], "model_version": "x"}]
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    results = response.json["results"][0]["result"]
    prepared = predictor.prepare(decode(image.read_bytes(), 10**9))
    expected, _ = segment(predictor, prepared, Prompt(((px, py, True),), None, "Pet"))
    if not expected.any():
        assert results == []
        return
    [new] = results
    assert new["value"]["brushlabels"] == ["Pet"]  # the annotator's label, no prev mask
    assert np.array_equal(decoded(new), expected)
