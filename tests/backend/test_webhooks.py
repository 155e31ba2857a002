"""Webhooks into the label store, with the captured Label Studio payloads
(SQLite always; PostgreSQL when SQUEEZESAM_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest

from squeezesam.backend import webhooks
from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.store import Store

CAPTURES = Path(
    os.environ.get(
        "SQUEEZESAM_LS_CAPTURES",
        Path(__file__).resolve().parents[3] / "shared" / "labelstudio" / "captures",
    )
)


def capture(name_glob: str, part: str = "request") -> dict:
    files = sorted(CAPTURES.glob(name_glob))
    if not files:
        pytest.skip(f"no Label Studio capture {name_glob} in {CAPTURES}")
    return json.loads(files[0].read_text())[part]["body"]


def kept(store: Store) -> dict[int, list[str]]:
    return {a.annotation_id: [o.label for o in a.objects] for a in store.training_annotations()}


# --- webhooks -----------------------------------------------------------------------------


def test_created_updated_deleted_webhooks_round_trip_into_the_store(store):
    assert webhooks.handle_event(store, capture("62_*__ml_webhook.json"))["result"] == "created"
    assert kept(store) == {1: ["Person"]}
    assert webhooks.handle_event(store, capture("65_*__ml_webhook.json"))["result"] == "updated"
    assert kept(store) == {1: ["Pet"]}
    assert store.get_annotation(1)["lead_time"] == pytest.approx(20.1)
    webhooks.handle_event(store, capture("68_*__ml_webhook.json"))
    assert kept(store) == {1: ["Pet"], 2: ["Person"]}
    assert webhooks.handle_event(store, capture("70_*__ml_webhook.json")) == {
        "status": "ok",
        "deleted": 1,
    }
    assert kept(store) == {2: ["Person"]}
    [task2] = store.training_annotations()
    assert (task2.project_id, task2.task_id, task2.parent_prediction) == (2, 2, 11)
    assert (task2.objects[0].width, task2.objects[0].height) == (512, 384)


def test_duplicate_webhooks_are_stored_once(store):
    for _ in range(3):
        webhooks.handle_event(store, capture("68_*__ml_webhook.json"))
    assert kept(store) == {2: ["Person"]}
    assert len(list(store.masks_dir.rglob("*.png"))) == 1


def test_start_training_returns_a_marker_for_the_caller_to_enqueue(store):
    answer = webhooks.handle_event(store, capture("72_*__ml_webhook.json"))
    assert answer == {"status": "ok", "train_requested": True, "project": 2}


def test_tasks_created_returns_the_task_ids_for_preannotation(store):
    assert webhooks.handle_event(store, capture("09_*__ml_webhook.json"))["tasks"] == [1, 2, 3]
    assert webhooks.handle_event(store, capture("11_*__ml_webhook.json"))["tasks"] == [4]


def test_other_actions_are_ignored(store):
    assert webhooks.handle_event(store, {"action": "PROJECT_UPDATED", "project": {"id": 2}}) == {
        "status": "ignored"
    }


def _broken(mutate) -> dict:
    payload = copy.deepcopy(capture("62_*__ml_webhook.json"))
    mutate(payload)
    return payload


def _brush(p: dict) -> dict:
    return p["annotation"]["result"][0]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (lambda: [], "JSON object"),
        (lambda: {"annotation": {}}, "no 'action'"),
        (lambda: _broken(lambda p: p.pop("annotation")), "'annotation' must be an object"),
        (lambda: _broken(lambda p: p["annotation"].update(id="x")), "annotation.id"),
        (lambda: _broken(lambda p: p["annotation"].update(updated_at=5)), "updated_at"),
        (lambda: _broken(lambda p: _brush(p)["value"].update(rle=[1, 2, 3])), "RLE"),
        (lambda: _broken(lambda p: _brush(p).update(original_width=100)), "expected 100x512x4"),
        (lambda: _broken(lambda p: _brush(p)["value"].update(format="png")), "format 'rle'"),
        (lambda: {"action": "ANNOTATIONS_DELETED", "annotations": [{}]}, "annotations"),
        (lambda: {"action": "TASKS_CREATED"}, "list 'tasks'"),
    ],
)
def test_malformed_payloads_raise_payload_error_and_store_nothing(store, payload, message):
    with pytest.raises(PayloadError, match=message) as caught:
        webhooks.handle_event(store, payload())
    assert isinstance(caught.value, ValueError) and caught.value.status == 400
    assert store.training_annotations() == [] and store.get_annotation(1) is None


def test_a_webhook_with_a_mask_is_handled_well_within_label_studios_1s(store):
    payload = capture("62_*__ml_webhook.json")
    webhooks.handle_event(store, capture("68_*__ml_webhook.json"))  # warm up (imports, pool)
    start = time.perf_counter()
    webhooks.handle_event(store, payload)
    elapsed = time.perf_counter() - start
    print(f"ANNOTATION_CREATED with one 338x512 mask: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5


def test_project_id_parses_the_predict_form():
    assert webhooks.project_id_of("2.1795977361") == 2
    assert webhooks.project_id_of({"id": 7}) == 7
    with pytest.raises(PayloadError):
        webhooks.project_id_of("abc")
