"""The routes `/predict`, `/setup` and `/webhook` under arbitrary bodies, through Flask's
test client: every generated body answers < 500 with a JSON `error` naming the problem,
or a valid result. The queue is stubbed (what the worker does is covered by the image and
worker tests), so no input waits on a worker. The strategies are the parser fuzz tests'
(test_fuzz_payloads.py), and so is the example count (SQUEEZESAM_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezesam.backend.jobs import Outcome
from squeezesam.backend.redis_conn import EmbeddedRedis

from .conftest import click_body, keypoint, rectangle
from .test_fuzz_payloads import EXAMPLES, FUZZ, brush_regions, contexts, json_values, regions

ROUTE_FUZZ = settings(FUZZ, max_examples=max(50, EXAMPLES // 3))  # each one is a request


@pytest.fixture(scope="module")
def fuzz_client(settings, tmp_path_factory):
    """The app on a private Redis and data dir, with the queue stubbed: an enqueued job
    answers at once with an empty mask (no worker is involved)."""
    from squeezesam.backend import app as app_module
    from squeezesam.backend import services as services_module

    server = EmbeddedRedis(watchdog=False)
    own = replace(settings, redis_url=server.url,
                  data_dir=str(tmp_path_factory.mktemp("fuzz-data")))  # fmt: skip
    calls: list[str] = []

    class StubDispatcher(services_module.Dispatcher):
        def run(self, queue, func, spec, timeout):
            calls.append(queue)
            return Outcome(200, json.dumps({"result": [], "score": 0.0, "model_version": "x"}))

        def submit(self, queue, func, spec, timeout):  # a real job, left in the queue
            calls.append(queue)
            return super().submit(queue, func, spec, timeout)

        def wait(self, job, deadline):
            return Outcome(200, json.dumps({"result": [], "score": 0.0, "model_version": "x"}))

    original = services_module.Dispatcher
    services_module.Dispatcher = StubDispatcher
    try:
        yield app_module.create_app(own).test_client(), calls
    finally:
        services_module.Dispatcher = original
        server.close()


def assert_clear(response):
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    assert response.is_json
    if response.status_code >= 400:
        body = response.get_json()
        assert isinstance(body.get("error"), str) and body["error"]
        assert body.get("status") == response.status_code


@ROUTE_FUZZ
@given(body=json_values)
def test_routes_with_any_json(fuzz_client, body):
    client, _ = fuzz_client
    for path in ("/predict", "/setup", "/webhook"):
        assert_clear(client.post(path, json=body))


@ROUTE_FUZZ
@given(data=st.binary(max_size=300), ctype=st.sampled_from(["application/json", "text/plain", ""]))
def test_routes_with_any_bytes(fuzz_client, data, ctype):
    client, _ = fuzz_client
    for path in ("/predict", "/setup", "/webhook"):
        assert_clear(client.post(path, data=data, content_type=ctype))


@ROUTE_FUZZ
@given(
    context=contexts,
    image=json_values | st.text(max_size=30),
    vary=st.sampled_from(["ctx", "tasks", "cfg"]),
)
def test_predict_with_structured_bodies(fuzz_client, label_config, context, image, vary):
    """Near-valid /predict bodies (capture 56's shape) with one part generated."""
    client, calls = fuzz_client
    prompts = [keypoint(50, 50, 100, 100), rectangle(10, 10, 50, 50, 100, 100)]
    body = click_body(label_config, "/data/upload/1/x.jpg", prompts)
    if vary == "ctx":
        body["params"]["context"] = context
    elif vary == "tasks":
        body["tasks"][0]["data"]["image"] = image
    else:
        body["label_config"] = image
    before = len(calls)
    response = client.post("/predict", json=body)
    assert_clear(response)
    if response.status_code == 200:
        assert isinstance(response.get_json()["results"], list)
    else:
        assert len(calls) == before  # refused before anything was queued


@ROUTE_FUZZ
@given(
    st.sampled_from(
        [
            "ANNOTATION_CREATED",
            "ANNOTATION_UPDATED",
            "ANNOTATIONS_DELETED",
            "START_TRAINING",
            "TASKS_CREATED",
            "PROJECT_UPDATED",
        ]
    ),  # fmt: skip
    json_values,
    json_values,
    st.lists(brush_regions | regions, max_size=3),
)
def test_webhook_with_structured_bodies(fuzz_client, action, project, task, result):
    client, _ = fuzz_client
    body = {
        "action": action,
        "project": project,
        "task": task,
        "annotation": {"id": 7, "result": result, "updated_at": "2026-01-01T00:00:00Z"},
        "annotations": task,
        "tasks": task,
    }
    assert_clear(client.post("/webhook", json=body))
