"""Replay the request bodies Label Studio 1.23.2 sent (captures) and compare shapes.

The captured backend answered from a fixed stand-in; we answer with real masks. What
must match is the shape: the same keys, the same JSON types, one result per task.
The URL task's image (`http://127.0.0.1:8081/x.jpg`, a server that existed only during
the capture) is pointed at an allowlisted image on the test server.
"""

from __future__ import annotations

import json

import pytest

from .conftest import load_capture


def shape(value):
    """A JSON value's structure: keys and types, list items by their first element."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def replayable(body: dict, fake_ls, sample_images) -> dict:
    text = json.dumps(body).replace(
        "http://127.0.0.1:8081/x.jpg", f"http://{fake_ls.other_host}/public/{sample_images[0].name}"
    )
    return json.loads(text)


def good_predict_shape() -> dict:
    """The response shape of a successful capture (some captures simulate failures).

    Plus a region `id`: the capture's stand-in backend sent none; ours does, so an
    accepted region can be matched with what was served (Label Studio stores result
    ids as given: captures 61-63; the e2e test stores our predictions)."""
    good = shape(load_capture("19_*__ml_predict.json")[0]["response"]["body"]["results"][0])
    good["result"][0]["id"] = "str"
    return good


CAPTURED = [c["file"] for c in load_capture("*__ml_*.json")]


@pytest.mark.parametrize("name", CAPTURED)
def test_replayed_capture_answers_in_the_captured_shape(name, client, fake_ls, sample_images):
    [capture] = load_capture(name)
    request, expected = capture["request"], capture["response"]
    body = replayable(request["body"], fake_ls, sample_images) if request["body"] else None
    response = client.open(request["path"], method=request["method"], json=body)
    assert response.status_code < 300, (name, response.json)
    answer = response.json
    if request["path"] == "/predict":
        # one result per task, in order, each shaped like a real capture's result
        assert len(answer["results"]) == len(body["tasks"])
        good = good_predict_shape()
        for item in answer["results"]:
            if item["result"]:
                assert shape(item) == good
            else:
                assert set(item) >= {"result", "score", "model_version"}
        regions = ((body.get("params") or {}).get("context") or {}).get("result", [])
        if any(r["type"] == "rectanglelabels" or r.get("is_positive") for r in regions):
            assert answer["results"][0]["result"], "a positive prompt gives a mask"
    elif request["path"] == "/webhook":
        # Label Studio only needs a 2xx JSON answer (and `job` for START_TRAINING); we say
        # what was stored. The SDK answers "Unknown event" to ANNOTATIONS_DELETED (it
        # listens for ANNOTATION_DELETED, which LS never sends); we store the deletion.
        action = body["action"]
        assert answer["status"] == "ok", (name, answer)
        stored = action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
        assert response.status_code == (201 if stored or action == "START_TRAINING" else 200)
        assert ("job" in answer) == (action == "START_TRAINING")
    elif expected["status"] < 300:
        assert shape(answer) == shape(expected["body"])
        assert (response.status_code == 201) == (expected["status"] == 201)


def test_predict_results_carry_the_setup_version(client, fake_ls, sample_images):
    setup = load_capture("04_*__ml_setup.json")[0]["request"]["body"]
    version = client.post("/setup", json=setup).json["model_version"]
    for capture in load_capture("*__ml_predict.json"):
        body = replayable(capture["request"]["body"], fake_ls, sample_images)
        for item in client.post("/predict", json=body).json["results"]:
            assert item["model_version"] == version
