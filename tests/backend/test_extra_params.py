"""Label Studio's "Extra params" (model settings) reach /setup and shape that project's
pre-annotation: bulk /predict, whole-project runs and `squeezesam preannotate`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from squeezesam.backend import project_params
from squeezesam.backend.app import create_app
from squeezesam.backend.labelstudio import PayloadError, parse_label_config
from squeezesam.backend.preannotate import enqueue_tasks
from squeezesam.backend.redis_conn import EmbeddedRedis

from .conftest import WorkerPool, make_settings
from .ls_standin import TOKEN
from .test_preannotate import CONFIG, run_project

_projects = iter(range(30_000, 40_000))


@pytest.fixture(scope="module")
def xp_settings(model_path, fake_ls, standin):
    server = EmbeddedRedis()
    yield make_settings(
        server.url, model_path, fake_ls, label_studio_url=standin.url,
        label_studio_api_key=TOKEN, preannotate_chunk=4, preannotate_retry_seconds=20.0,
    )  # fmt: skip
    server.close()


@pytest.fixture(scope="module")
def conn(xp_settings) -> redis.Redis:
    return redis.Redis.from_url(xp_settings.redis_url)


@pytest.fixture(scope="module")
def xp_client(xp_settings):
    return create_app(xp_settings).test_client()


@pytest.fixture(scope="module")
def xp_pool(xp_settings):
    pool = WorkerPool(xp_settings)
    pool.start("preannotate")
    pool.wait_alive("preannotate", 1)
    yield pool
    pool.stop()


def setup(client, project: int, extra) -> object:
    return client.post("/setup", json={"project": f"{project}.1700000000", "schema": CONFIG,
                                       "hostname": "http://ls", "access_token": "x",
                                       "extra_params": extra})  # fmt: skip


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"min_scor": 0.5}, "unknown key 'min_scor'"),
        ({"labels": ["Person", "Cat"]}, "'Cat' is not a BrushLabels label"),
        ({"labels": []}, "labels=[] is not valid"),
        ({"min_score": 1.5}, "min_score=1.5 is not valid: a number from 0 to 1"),
        ({"min_score": "high"}, 'min_score="high"'),
        ({"max_objects": 0}, "max_objects=0 is not valid: an integer of at least 1"),
        ({"max_objects": 2.5}, "max_objects=2.5"),
        ({"zero_click": "maybe"}, 'zero_click="maybe" is not valid: true or false'),
        ("{not json", "Extra params are not valid JSON"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_setup_refuses_a_bad_extra_param_naming_key_and_value(xp_client, extra, named):
    response = setup(xp_client, next(_projects), extra)
    assert response.status_code == 422, response.json
    assert named in response.json["error"]


def test_label_studio_shows_the_bad_key_on_the_model_card(xp_settings):
    """Label Studio keeps `str(HTTPError)` of a failed /setup as the ML backend's
    error_message (ml/api_connector.py, 1.23.2): the reason phrase carries our message."""
    import threading

    import requests

    from squeezesam.backend.webserver import web_server

    server = web_server(create_app(xp_settings), "127.0.0.1", 0, threads=2)
    threading.Thread(target=server.run, daemon=True).start()
    try:
        answer = requests.post(f"http://127.0.0.1:{server.effective_port}/setup",
                               json={"project": "3.1", "schema": CONFIG,
                                     "extra_params": {"zero_clik": False}}, timeout=30)  # fmt: skip
        with pytest.raises(requests.HTTPError) as caught:
            answer.raise_for_status()
    finally:
        server.close()
    assert str(caught.value).startswith(
        "422 Client Error: Extra params: unknown key 'zero_clik' (known: labels, min_score, "
    )
    assert answer.json()["error"].startswith("Extra params: unknown key 'zero_clik'")


def test_setup_keeps_valid_extra_params_per_project_and_null_clears_them(xp_client, conn):
    project, other = next(_projects), next(_projects)
    extra = '{"labels": "person, Pet", "min_score": "0.25", "max_objects": 3, "zero_click": "on"}'
    assert setup(xp_client, project, extra).status_code == 200  # JSON text works too
    assert project_params.load(conn, project) == project_params.ProjectParams(
        labels=("Person", "Pet"), min_score=0.25, max_objects=3, zero_click=True
    )
    assert project_params.load(conn, other) is None  # per project
    assert setup(xp_client, project, None).status_code == 200
    assert project_params.load(conn, project) is None


def test_filter_keeps_label_score_and_count_and_rescores():
    def region(label: str, score: float) -> dict:
        return {"value": {"brushlabels": [label]}, "score": score}

    item = {"result": [region("Person", 0.9), region("Pet", 0.8), region("Person", 0.3),
                       region("Person", 0.7)], "score": 0.3, "model_version": "v"}  # fmt: skip
    config = parse_label_config(CONFIG)
    params = project_params.parse({"labels": ["Person"], "min_score": 0.5, "max_objects": 1},
                                  config)  # fmt: skip
    assert project_params.filter_item(item, params) == {
        "result": [region("Person", 0.9)],
        "score": 0.9,
        "model_version": "v",
    }
    two = project_params.parse({"max_objects": 2}, config)
    assert [r["score"] for r in project_params.filter_item(item, two)["result"]] == [0.9, 0.8]
    assert project_params.filter_item(item, project_params.DEFAULT) is item
    with pytest.raises(PayloadError):
        project_params.parse({"labels": "Dog"}, config)


# --- what they change -----------------------------------------------------------------------------


def bulk(client, standin, project: int, ids: list[int]) -> list[dict]:
    tasks = [standin.tasks[t] | {"predictions": []} for t in ids]
    body = {"tasks": tasks, "project": f"{project}.1700000000", "label_config": CONFIG,
            "params": {"context": None}}  # fmt: skip
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.json
    return response.json["results"]


def labels_of(item: dict) -> list[str]:
    return [r["value"]["brushlabels"][0] for r in item["result"]]


def test_extra_params_shape_bulk_predict(xp_client, xp_pool, standin, sample_images):
    project = next(_projects)
    ids = standin.add_tasks(project, [p.name for p in sample_images[:10]])
    assert setup(xp_client, project, None).status_code == 200
    plain = bulk(xp_client, standin, project, ids)
    # the params must have something to remove: a second object or a non-Person one
    assert any(len(item["result"]) >= 2 or set(labels_of(item)) - {"Person"} for item in plain)
    assert setup(xp_client, project, {"max_objects": 1, "labels": ["Person"]}).status_code == 200
    shaped = bulk(xp_client, standin, project, ids)
    for before, after in zip(plain, shaped, strict=True):
        persons = [r for r in before["result"] if r["value"]["brushlabels"] == ["Person"]]
        best = max(persons, key=lambda r: r["score"], default=None)
        assert after["result"] == ([best] if best else [])
        assert after["score"] == (best["score"] if best else 0.0)
    assert setup(xp_client, project, {"zero_click": False}).status_code == 200
    off = bulk(xp_client, standin, project, ids)
    assert all("result" not in item and "zero_click" in item["skipped"] for item in off)


def test_extra_params_shape_whole_project_runs(xp_client, xp_pool, xp_settings, conn, standin,
                                                sample_images):  # fmt: skip
    project = next(_projects)
    ids = standin.add_tasks(project, [p.name for p in sample_images[4:8]])
    assert setup(xp_client, project, {"labels": "Pet", "max_objects": 1}).status_code == 200
    status = run_project(conn, xp_settings, project)
    assert status["done"] == 4
    for task_id in ids:
        [prediction] = standin.predictions_of(task_id)
        assert len(prediction["result"]) <= 1
        assert all(r["value"]["brushlabels"] == ["Pet"] for r in prediction["result"])
    # zero_click off: new tasks (TASKS_CREATED) are not queued
    assert setup(xp_client, project, {"zero_click": False}).status_code == 200
    more = standin.add_tasks(project, [sample_images[8].name])
    assert enqueue_tasks(conn, xp_settings, project, more, CONFIG) == 0


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | settings.to_env()
    return subprocess.run([sys.executable, "-m", "squeezesam.backend.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_preannotate_command_honours_the_extra_params(xp_client, xp_pool, xp_settings, standin,
                                                      sample_images):  # fmt: skip
    project = next(_projects)
    ids = standin.add_tasks(project, [p.name for p in sample_images[:3]])
    assert setup(xp_client, project, {"max_objects": 1}).status_code == 200
    done = cli(xp_settings, "preannotate", "--project", str(project))
    assert done.returncode == 0, done.stderr
    assert all(len(standin.predictions_of(t)[0]["result"]) <= 1 for t in ids)
    assert any(standin.predictions_of(t)[0]["result"] for t in ids)


def test_preannotate_command_reads_extra_params_from_label_studio_when_none_kept(
    xp_settings, conn, standin, sample_images
):
    project = next(_projects)
    standin.add_tasks(project, [sample_images[0].name])
    standin.ml_backends.append({"id": 1, "project": project, "url": "http://backend:9090",
                                "extra_params": {"zero_click": False}})  # fmt: skip
    done = cli(xp_settings, "preannotate", "--project", str(project))
    assert done.returncode == 0, done.stderr
    assert "pre-annotation is off for this project" in done.stdout
    assert project_params.load(conn, project) == project_params.ProjectParams(zero_click=False)
    standin.ml_backends[-1]["extra_params"] = {"max_objects": "many"}
    conn.delete(project_params.key(project))
    bad = cli(xp_settings, "preannotate", "--project", str(project))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == (
        f'squeezesam preannotate: project {project}: Extra params: max_objects="many" is not '
        "valid: an integer of at least 1"
    )
