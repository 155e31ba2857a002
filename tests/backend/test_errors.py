"""Every bad input gets a clear JSON error naming the problem; the service keeps serving."""

from __future__ import annotations

import pytest
from PIL import Image

from .conftest import click_body, keypoint, upload_ref

NO_BRUSH = '<View><Image name="image" value="$image"/></View>'
NO_IMAGE = '<View><Text name="t" value="$t"/></View>'


def click(label_config, image_ref, x=50.0, y=50.0):
    return click_body(label_config, image_ref, [keypoint(x, y, 100, 100)])


@pytest.mark.parametrize(
    "make_body, status, words",
    [
        (lambda cfg, img: "{not json", 400, "not valid JSON"),
        (lambda cfg, img: {"tasks": []}, 422, "tasks"),
        (lambda cfg, img: click(cfg, img) | {"label_config": NO_BRUSH}, 422, "BrushLabels"),
        (lambda cfg, img: click(cfg, img) | {"label_config": NO_IMAGE}, 422, "<Image>"),
        (lambda cfg, img: click(cfg, img) | {"label_config": "<View"}, 422, "not valid XML"),
        (lambda cfg, img: click(cfg, img, x=130.0), 422, "outside the image"),
        (lambda cfg, img: click(cfg, img, y=-1.0), 422, "outside the image"),
        (lambda cfg, img: click(cfg, "/corrupt.jpg"), 422, "corrupt"),
        (lambda cfg, img: click(cfg, "/not-an-image.jpg"), 422, "not an image"),
        (lambda cfg, img: click(cfg, "/bomb.png"), 413, "IMAGE_MAX_PIXELS"),
        (lambda cfg, img: click(cfg, "http://203.0.113.9/cat.jpg"), 403, "not allowed"),
        (lambda cfg, img: click(cfg, "ftp://example.org/cat.jpg"), 422, "scheme"),
        (lambda cfg, img: click(cfg, "/data/upload/1/0badf00d-missing.jpg"), 404, "404"),
        (lambda cfg, img: click(cfg, "http://127.0.0.1:9/x.jpg"), 403, "not allowed"),
    ],
)
def test_bad_click_gets_a_clear_error(
    make_body, status, words, client, label_config, sample_images
):
    body = make_body(label_config, upload_ref(sample_images[0]))
    if isinstance(body, str):
        response = client.post("/predict", data=body, content_type="application/json")
    else:
        response = client.post("/predict", json=body)
    assert response.status_code == status, response.json
    assert response.is_json and words in response.json["error"]
    assert response.json["status"] == status


def test_task_without_image(client, label_config):
    body = click(label_config, "x")
    body["tasks"][0]["data"] = {"text": "no image here"}
    response = client.post("/predict", json=body)
    assert response.status_code == 422 and "no image" in response.json["error"]


def test_presign_redirect_to_a_host_not_allowed_is_refused(client, label_config):
    ref = "/tasks/1/presign/?fileuri=http://127.0.0.1:9/x.jpg"
    response = client.post("/predict", json=click(label_config, ref))
    assert response.status_code == 403 and "127.0.0.1:9" in response.json["error"]


def test_setup_names_what_the_config_lacks(client):
    response = client.post("/setup", json={"project": "1.1", "schema": NO_BRUSH})
    assert response.status_code == 422 and "BrushLabels" in response.json["error"]


def test_unknown_route_and_method_are_json(client):
    assert client.get("/nope").status_code == 404 and client.get("/nope").is_json
    response = client.get("/predict")
    assert response.status_code == 405 and response.is_json


def test_service_keeps_serving_after_errors(client, label_config, sample_images):
    for _ in range(2):
        client.post("/predict", json=click(label_config, "/corrupt.jpg"))
        client.post("/predict", data="{", content_type="application/json")
    image = sample_images[0]
    w, h = Image.open(image).size
    body = click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h)])
    response = client.post("/predict", json=body)
    assert response.status_code == 200 and response.json["results"][0]["result"]
