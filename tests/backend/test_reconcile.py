"""Reconcile: the label store caught up with Label Studio's API (missed webhooks,
deletions), and Label Studio down changing nothing."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from squeezesam.backend import reconcile, webhooks

from .test_webhooks import capture, kept


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
    webhooks.handle_event(store, capture("62_*__ml_webhook.json"))  # annotation 1
    # Label Studio now has only annotation 2 (its webhook was missed; 1 was deleted)
    ls = FakeLabelStudio([_pair("68_*__ml_webhook.json")])
    counts = reconcile.reconcile(store, ls, 2)
    assert counts["created"] == 1 and counts["tombstoned"] == 1
    assert kept(store) == {2: ["Person"]}
    assert store.get_annotation(1)["deleted"] is True
    # a second run changes nothing
    second = reconcile.reconcile(store, ls, 2)
    assert second["duplicate"] == 1 and sum(second.values()) == 1


def test_reconcile_never_resurrects_a_deleted_annotation(store):
    webhooks.handle_event(store, capture("62_*__ml_webhook.json"))
    webhooks.handle_event(store, capture("70_*__ml_webhook.json"))  # deleted annotation 1
    # Label Studio still lists it (e.g. the listing raced the deletion)
    counts = reconcile.reconcile(store, FakeLabelStudio([_pair("62_*__ml_webhook.json")]), 2)
    assert counts["deleted"] == 1 and kept(store) == {}


def test_reconcile_takes_the_model_version_from_the_tasks_predictions(store):
    task, annotation = _pair("62_*__ml_webhook.json")
    task = task | {"predictions": capture("92_*__ls_api.json", part="response")}
    reconcile.reconcile(store, FakeLabelStudio([(task, annotation)]), 2)
    assert store.get_annotation(1)["model_version"] == "capture-1"


@pytest.mark.parametrize(
    "error",
    [ConnectionError("Connection refused"), RuntimeError("status_code: 502, body: Bad Gateway")],
)
def test_label_studio_down_during_reconcile_changes_nothing(store, error):
    webhooks.handle_event(store, capture("62_*__ml_webhook.json"))
    before = store.get_annotation(1)
    ls = FakeLabelStudio([])  # would tombstone annotation 1 if it answered
    ls.error = error
    with pytest.raises(reconcile.ReconcileError, match="nothing was changed"):
        reconcile.reconcile(store, ls, 2)
    assert store.get_annotation(1) == before
    assert kept(store) == {1: ["Person"]}


def test_label_studio_source_lists_annotations_through_the_sdk(store):
    """The real SDK adapter against a stand-in for Label Studio's /api/tasks."""

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
        source = reconcile.LabelStudioSource(f"http://127.0.0.1:{server.server_address[1]}", "t0k")
        counts = reconcile.reconcile(store, source, 2)
    finally:
        server.shutdown()
    assert requests[0].startswith("/api/tasks/?") and "project=2" in requests[0]
    assert counts["created"] == 1 and kept(store) == {1: ["Person"]}
