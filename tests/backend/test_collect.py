"""Webhooks and reconcile into the label store, with the captured Label Studio payloads
(SQLite always; PostgreSQL when SQUEEZESAM_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest

from squeezesam.backend import collect
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
    assert collect.handle_event(store, capture("62_*__ml_webhook.json"))["result"] == "created"
    assert kept(store) == {1: ["Person"]}
    assert collect.handle_event(store, capture("65_*__ml_webhook.json"))["result"] == "updated"
    assert kept(store) == {1: ["Pet"]}
    assert store.get_annotation(1)["lead_time"] == pytest.approx(20.1)
    collect.handle_event(store, capture("68_*__ml_webhook.json"))
    assert kept(store) == {1: ["Pet"], 2: ["Person"]}
    assert collect.handle_event(store, capture("70_*__ml_webhook.json")) == {
        "status": "ok",
        "deleted": 1,
    }
    assert kept(store) == {2: ["Person"]}
    [task2] = store.training_annotations()
    assert (task2.project_id, task2.task_id, task2.parent_prediction) == (2, 2, 11)
    assert (task2.objects[0].width, task2.objects[0].height) == (512, 384)


def test_duplicate_webhooks_are_stored_once(store):
    for _ in range(3):
        collect.handle_event(store, capture("68_*__ml_webhook.json"))
    assert kept(store) == {2: ["Person"]}
    assert len(list(store.masks_dir.rglob("*.png"))) == 1


def test_start_training_returns_a_marker_for_the_caller_to_enqueue(store):
    answer = collect.handle_event(store, capture("72_*__ml_webhook.json"))
    assert answer == {"status": "ok", "train_requested": True, "project": 2}


def test_tasks_created_returns_the_task_ids_for_preannotation(store):
    assert collect.handle_event(store, capture("09_*__ml_webhook.json"))["tasks"] == [1, 2, 3]
    assert collect.handle_event(store, capture("11_*__ml_webhook.json"))["tasks"] == [4]


def test_other_actions_are_ignored(store):
    assert collect.handle_event(store, {"action": "PROJECT_UPDATED", "project": {"id": 2}}) == {
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
    with pytest.raises(collect.PayloadError, match=message) as caught:
        collect.handle_event(store, payload())
    assert isinstance(caught.value, ValueError) and caught.value.status == 400
    assert store.training_annotations() == [] and store.get_annotation(1) is None


def test_a_webhook_with_a_mask_is_handled_well_within_label_studios_1s(store):
    payload = capture("62_*__ml_webhook.json")
    collect.handle_event(store, capture("68_*__ml_webhook.json"))  # warm up (imports, pool)
    start = time.perf_counter()
    collect.handle_event(store, payload)
    elapsed = time.perf_counter() - start
    print(f"ANNOTATION_CREATED with one 338x512 mask: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.5


# --- reconcile ----------------------------------------------------------------------------


class FakeLabelStudio:
    """The AnnotationSource protocol over a dict of (task, annotation) pairs."""

    def __init__(self, pairs: list[tuple[dict, dict]]) -> None:
        self.pairs = pairs
        self.error: Exception | None = None

    def list_annotations(self, project_id: int) -> list[tuple[dict, dict]]:
        if self.error:
            raise self.error
        return [(t, a) for t, a in self.pairs if a["project"] == project_id]


def _pair(name_glob: str) -> tuple[dict, dict]:
    body = capture(name_glob)
    return body["task"], body["annotation"]


def test_reconcile_adds_a_missed_annotation_and_tombstones_a_removed_one(store):
    collect.handle_event(store, capture("62_*__ml_webhook.json"))  # annotation 1
    # Label Studio now has only annotation 2 (its webhook was missed; 1 was deleted)
    ls = FakeLabelStudio([_pair("68_*__ml_webhook.json")])
    counts = collect.reconcile(store, ls, 2)
    assert counts["created"] == 1 and counts["tombstoned"] == 1
    assert kept(store) == {2: ["Person"]}
    assert store.get_annotation(1)["deleted"] is True
    # a second run changes nothing
    second = collect.reconcile(store, ls, 2)
    assert second["duplicate"] == 1 and sum(second.values()) == 1


def test_reconcile_never_resurrects_a_deleted_annotation(store):
    collect.handle_event(store, capture("62_*__ml_webhook.json"))
    collect.handle_event(store, capture("70_*__ml_webhook.json"))  # deleted annotation 1
    # Label Studio still lists it (e.g. the listing raced the deletion)
    counts = collect.reconcile(store, FakeLabelStudio([_pair("62_*__ml_webhook.json")]), 2)
    assert counts["deleted"] == 1 and kept(store) == {}


def test_reconcile_takes_the_model_version_from_the_tasks_predictions(store):
    task, annotation = _pair("62_*__ml_webhook.json")
    task = task | {"predictions": capture("92_*__ls_api.json", part="response")}
    collect.reconcile(store, FakeLabelStudio([(task, annotation)]), 2)
    assert store.get_annotation(1)["model_version"] == "capture-1"


@pytest.mark.parametrize(
    "error",
    [ConnectionError("Connection refused"), RuntimeError("status_code: 502, body: Bad Gateway")],
)
def test_label_studio_down_during_reconcile_changes_nothing(store, error):
    collect.handle_event(store, capture("62_*__ml_webhook.json"))
    before = store.get_annotation(1)
    ls = FakeLabelStudio([])  # would tombstone annotation 1 if it answered
    ls.error = error
    with pytest.raises(collect.ReconcileError, match="nothing was changed"):
        collect.reconcile(store, ls, 2)
    assert store.get_annotation(1) == before
    assert kept(store) == {1: ["Person"]}


def test_project_id_parses_the_predict_form():
    assert collect.project_id_of("2.1795977361") == 2
    assert collect.project_id_of({"id": 7}) == 7
    with pytest.raises(collect.PayloadError):
        collect.project_id_of("abc")


def test_label_studio_source_lists_annotations_through_the_sdk(store):
    """The real SDK adapter against a stand-in for Label Studio's /api/tasks."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = capture("62_*__ml_webhook.json")
    task = body["task"] | {"annotations": [body["annotation"]], "predictions": []}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            if "page=1" not in self.path:  # Label Studio answers 404 past the last page
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps({"tasks": [task], "total": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = collect.LabelStudioSource(f"http://127.0.0.1:{server.server_address[1]}", "t0k")
        counts = collect.reconcile(store, source, 2)
    finally:
        server.shutdown()
    assert requests[0].startswith("/api/tasks/?") and "project=2" in requests[0]
    assert counts["created"] == 1 and kept(store) == {1: ["Person"]}
