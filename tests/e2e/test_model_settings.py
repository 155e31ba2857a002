"""The backend's model settings (Label Studio's Extra params), set where a lead sets
them: in Label Studio's Edit Model form, through its own API."""

from __future__ import annotations

import json

import pytest

from .labelstudio_project import CONFIG, pick_images

pytestmark = pytest.mark.e2e


def test_extra_params_set_in_label_studio_shape_its_pre_annotation(labelstudio, backend):
    """Extra params saved through Label Studio's own API reach our /setup (Label Studio
    sends them), change what Retrieve Predictions stores, and a bad one is refused where
    the lead sees it: Label Studio's answer to saving the model settings names the key.

    Edits go the way Label Studio 1.23's *Edit Model* form sends them (web app:
    `updateMLBackend` is `PATCH /api/ml/:pk` with every field of `CustomBackendForm`,
    the Extra params as the typed text). Its `MLBackendSerializer.validate` runs
    `MLBackend.healthcheck_(**attrs)` and `setup_(**attrs)` on the request's fields even
    for a PATCH, so `url` and `project` must be in the body (without them: 500, missing
    `url`), and a /setup that refuses the params makes the save a 400 carrying our
    reason, leaving the saved settings as they were."""
    ls, images = labelstudio, pick_images()
    body = {"title": "SqueezeSAM e2e Extra params", "label_config": CONFIG.read_text()}
    pid = ls.api("POST", "/api/projects", json=body)["id"]
    files = {f"file{n}": (i["image"].name, i["image"].read_bytes(), "image/jpeg")
             for n, i in enumerate(images)}  # fmt: skip
    ls.api("POST", f"/api/projects/{pid}/import", files=files)
    tasks = ls.api("GET", f"/api/tasks?project={pid}&page_size=100")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    label_of = {i["image"].name: i["label"] for i in images}
    truth = {t["id"]: label_of[t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]]
             for t in tasks}  # fmt: skip
    params = {"labels": ["Pet"], "max_objects": 1}
    connect = {"url": backend.url, "project": pid, "title": "squeezesam", "is_interactive": True,
               "extra_params": params}  # fmt: skip
    ml = ls.api("POST", "/api/ml", json=connect)
    assert ls.api("GET", f"/api/ml/{ml['id']}")["state"] == "CO"
    setups = [r for r in backend.proxy.seen("/setup")
              if str(r["body"].get("project", "")).startswith(f"{pid}.")]  # fmt: skip
    assert setups and setups[-1]["body"]["extra_params"] == params, "no /setup with the params"

    def retrieve() -> None:
        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               json={"selectedItems": {"all": False, "included": list(truth)}})  # fmt: skip

    retrieve()
    stored = {t: ls.api("GET", f"/api/predictions?task={t}") for t in truth}
    assert all(len(p) == 1 for p in stored.values()), stored
    labels = {t: [r["value"]["brushlabels"][0] for r in p[0]["result"]] for t, p in stored.items()}
    assert all(len(found) <= 1 and set(found) <= {"Pet"} for found in labels.values()), labels
    assert any(labels[t] == ["Pet"] for t, label in truth.items() if label == "Pet"), labels

    def save_settings(extra: str, expect: int = 200):
        form = {"project": pid, "title": "squeezesam", "url": backend.url, "auth_method": "NONE",
                "extra_params": extra, "is_interactive": True}  # fmt: skip
        return ls.api("PATCH", f"/api/ml/{ml['id']}", json=form, expect=expect)

    def last_setup() -> dict:
        return [r for r in backend.proxy.seen("/setup")
                if str(r["body"].get("project", "")).startswith(f"{pid}.")][-1]  # fmt: skip

    # a typo: Label Studio refuses the save with our 422's reason; the settings stay
    refused = save_settings('{"min_scor": 0.5}', expect=400)
    assert "min_scor" in json.dumps(refused), refused
    assert last_setup()["status"] == 422 and "min_scor" in json.dumps(last_setup()["answer"])
    card = ls.api("GET", f"/api/ml/{ml['id']}")
    assert card["state"] == "CO" and card["extra_params"] == params, card

    # pre-annotation off: Retrieve Predictions stores nothing
    save_settings('{"zero_click": false}')
    card = ls.api("GET", f"/api/ml/{ml['id']}")
    assert card["state"] == "CO" and last_setup()["status"] == 200, card
    assert json.loads(last_setup()["body"]["extra_params"]) == {"zero_click": False}
    ls.api("POST", f"/api/dm/actions?id=delete_tasks_predictions&project={pid}",
           json={"selectedItems": {"all": False, "included": list(truth)}})  # fmt: skip
    retrieve()
    assert all(ls.api("GET", f"/api/predictions?task={t}") == [] for t in truth)
