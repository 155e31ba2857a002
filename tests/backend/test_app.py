"""The protocol end to end: app -> Redis -> real worker processes -> model -> RLE."""

from __future__ import annotations

import numpy as np
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from .conftest import click_body, keypoint, rectangle, upload_ref


def test_health_and_setup(client, label_config):
    health = client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    setup = client.post("/setup", json={"project": "1.1", "schema": label_config})
    assert setup.status_code == 200
    versions = client.get("/versions").json
    assert setup.json["model_version"] == versions["model_version"]


def test_click_returns_brush_mask_at_original_size(client, label_config, sample_images):
    image = sample_images[0]
    w, h = Image.open(image).size
    body = click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h, label="Pet")])
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    [item] = response.json["results"]
    version = client.post("/setup", json={"schema": label_config}).json["model_version"]
    assert item["model_version"] == version
    [region] = item["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Pet"]
    assert (region["original_width"], region["original_height"]) == (w, h)
    mask = decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3]
    assert mask[h // 2, w // 2] == 255  # the clicked pixel is in the object
    assert set(np.unique(mask)) <= {0, 255}
