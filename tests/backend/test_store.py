"""The label store on SQLite (always) and PostgreSQL (when SQUEEZESAM_TEST_POSTGRES_URL is
set, e.g. by `.ci/postgres.sh`): idempotent upserts, replacement, tombstones, clicks, and
failures that leave nothing half-written. Payloads are the captured Label Studio ones."""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa
from label_studio_sdk.converter.brush import mask2rle

from squeezesam.backend import webhooks
from squeezesam.backend.labelstudio import parse_context, parse_label_config
from squeezesam.backend.store import Store, StoreError
from squeezesam.backend.store.schema import ClickRecord, metadata

CAPTURES = Path(
    os.environ.get(
        "SQUEEZESAM_LS_CAPTURES",
        Path(__file__).resolve().parents[3] / "shared" / "labelstudio" / "captures",
    )
)
SHARED_DATA = Path(
    os.environ.get(
        "SQUEEZESAM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"
    )
)


def webhook(name_glob: str) -> dict:
    files = sorted(CAPTURES.glob(name_glob))
    if not files:
        pytest.skip(f"no Label Studio capture {name_glob} in {CAPTURES}")
    return json.loads(files[0].read_text())["request"]["body"]


def real_objects() -> tuple[np.ndarray, list[tuple[int, str]]]:
    """A real index mask with several objects from the shared COCO people/pets set."""
    objects_csv = SHARED_DATA / "coco_people_pets" / "objects.csv"
    if not objects_csv.is_file():
        pytest.skip(f"no shared data at {objects_csv}")
    rows = [line.split(",") for line in objects_csv.read_text().splitlines()[1:]]
    image = rows[0][0]
    mask = cv2.imread(str(SHARED_DATA / "coco_people_pets" / "masks" / f"{image}.png"), -1)
    return mask, [(int(r[1]), r[2]) for r in rows if r[0] == image]


def brush_payload(masks: list[tuple[np.ndarray, str]], annotation_id: int = 50) -> dict:
    """Capture 62 (ANNOTATION_CREATED) with its brush regions replaced by these masks."""
    payload = copy.deepcopy(webhook("62_*__ml_webhook.json"))
    template = next(r for r in payload["annotation"]["result"] if r["type"] == "brushlabels")
    regions = []
    for i, (mask, label) in enumerate(masks):
        region = copy.deepcopy(template)
        region["original_height"], region["original_width"] = mask.shape
        region["value"]["rle"] = mask2rle(np.where(mask > 0, 255, 0).astype(np.uint8))
        region["value"]["brushlabels"] = [label]
        region["id"] = f"region{i}"
        regions.append(region)
    payload["annotation"]["result"] = regions
    payload["annotation"]["id"] = annotation_id
    return payload


def test_stored_mask_png_equals_what_the_rle_encodes(store):
    index, objs = real_objects()
    masks = [(index == k, {"person": "Person", "pet": "Pet"}.get(lab, "Car")) for k, lab in objs]
    answer = webhooks.handle_event(store, brush_payload(masks))
    assert answer == {"status": "ok", "result": "created", "annotation": 50}
    [stored] = store.training_annotations()
    assert [o.label for o in stored.objects] == [lab for _, lab in masks]
    for obj, (expected, _) in zip(stored.objects, masks, strict=True):
        png = cv2.imread(str(obj.mask_path), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint8 and png.shape == expected.shape
        assert np.array_equal(png > 0, expected)
        assert obj.area == int(expected.sum())


def test_same_webhook_twice_is_stored_once(store):
    payload = webhook("62_*__ml_webhook.json")
    assert webhooks.handle_event(store, payload)["result"] == "created"
    assert webhooks.handle_event(store, payload)["result"] == "duplicate"
    assert len(store.training_annotations()) == 1
    assert len(list(store.masks_dir.rglob("*.png"))) == 1  # the resend wrote no file


def test_older_version_arriving_late_does_not_overwrite_newer(store):
    webhooks.handle_event(store, webhook("65_*__ml_webhook.json"))  # updated: label Pet
    assert webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))["result"] == "duplicate"
    [stored] = store.training_annotations()
    assert [o.label for o in stored.objects] == ["Pet"]


def test_update_replaces_objects_and_removes_the_old_mask_files(store):
    index, objs = real_objects()
    two = [(index == objs[0][0], "Person"), (index == objs[1][0], "Person")]
    webhooks.handle_event(store, brush_payload(two))
    old_files = set(store.masks_dir.rglob("*.png"))
    update = brush_payload([(index == objs[1][0], "Pet")])
    update["action"] = "ANNOTATION_UPDATED"
    update["annotation"]["updated_at"] = "2030-01-01T00:00:00.000001Z"
    assert webhooks.handle_event(store, update)["result"] == "updated"
    [stored] = store.training_annotations()
    assert [(o.number, o.label) for o in stored.objects] == [(1, "Pet")]
    assert not (old_files & set(store.masks_dir.rglob("*.png")))  # old files gone
    assert len(list(store.masks_dir.rglob("*.png"))) == 1


def test_deleted_annotation_is_a_tombstone_that_nothing_resurrects(store):
    created = webhook("62_*__ml_webhook.json")
    webhooks.handle_event(store, created)
    assert store.mark_deleted([1], 2) == 1
    assert store.training_annotations() == []
    assert store.get_annotation(1)["deleted"] is True
    again = copy.deepcopy(created)
    again["annotation"]["updated_at"] = "2030-01-01T00:00:00Z"  # even a newer version
    assert webhooks.handle_event(store, again)["result"] == "deleted"
    assert store.training_annotations() == []
    # a deletion for an id never seen leaves a tombstone too
    assert store.mark_deleted([77]) == 1
    assert store.mark_deleted([77]) == 0


def test_cancelled_annotation_is_kept_but_is_not_training_data(store):
    payload = copy.deepcopy(webhook("62_*__ml_webhook.json"))
    payload["annotation"]["was_cancelled"] = True
    assert webhooks.handle_event(store, payload)["result"] == "created"
    assert store.get_annotation(1)["was_cancelled"] is True
    assert store.training_annotations() == []
    assert list(store.masks_dir.rglob("*.png")) == []


def test_annotation_row_keeps_annotator_lead_time_and_parent_prediction(store):
    webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))
    row = store.get_annotation(1)
    assert (row["project_id"], row["task_id"], row["annotator"]) == (2, 1, 1)
    assert row["lead_time"] == pytest.approx(12.3)
    assert row["parent_prediction"] == 1
    assert row["image_ref"] == "/data/upload/2/a26fdc65-ccp_0001.jpg"
    assert json.loads(row["result_json"])[1]["type"] == "keypointlabels"  # prompts kept
    assert row["created_at"].isoformat().startswith("2026-11-29T18:38:32")


def test_record_clicks_from_a_captured_context_skips_resent_keypoints(store):
    body = webhook("60_*__ml_predict.json")
    context = body["params"]["context"]
    project = webhooks.project_id_of(body["project"])
    task = body["tasks"][0]["id"]
    clicks = parse_context(context, parse_label_config(body["label_config"])).records
    assert [(c.is_positive, c.label) for c in clicks] == [(True, "Person"), (False, "Person")]
    assert store.served.record_clicks(project, task, clicks, model_version="m1") == 2
    assert store.served.record_clicks(project, task, clicks, model_version="m1") == 0
    stored = store.served.clicks_for_task(task)
    assert [(c["x"], c["y"], c["is_positive"]) for c in stored] == [
        (48.5, 40.2, True),
        (60.1, 70.3, False),
    ]
    assert stored[0]["model_version"] == "m1" and stored[0]["project_id"] == 2
    # clicks without a region id are all kept
    assert store.served.record_clicks(project, task, [ClickRecord(1.0, 2.0, True)] * 2) == 2


def test_stats_count_kept_deleted_objects_and_clicks(store):
    webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))
    webhooks.handle_event(store, webhook("68_*__ml_webhook.json"))
    webhooks.handle_event(store, webhook("70_*__ml_webhook.json"))
    store.served.record_clicks(2, 1, [ClickRecord(1.0, 2.0, True, region_id="a")])
    stats = store.stats()["projects"]["2"]
    assert stats["annotations"] == {"kept": 1, "deleted": 1, "cancelled": 0}
    assert stats["objects"] == {"Person": 1} and stats["clicks"] == 1


def test_disk_full_while_writing_masks_raises_store_error_and_leaves_nothing(store, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("squeezesam.backend.store.db.os.fsync", full)
    with pytest.raises(StoreError, match=r"cannot write mask .*\.png: No space left"):
        webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))
    monkeypatch.undo()
    assert store.get_annotation(1) is None
    assert [p for p in store.masks_dir.rglob("*") if p.is_file()] == []


def test_unwritable_mask_folder_raises_store_error_naming_it(store):
    (store.masks_dir / "p2").write_text("a file where the project folder belongs")
    with pytest.raises(StoreError, match=r"masks/p2/a1"):
        webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))
    assert store.get_annotation(1) is None


def test_database_failure_mid_transaction_keeps_no_row_and_no_mask(store):
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE objects"))  # the objects insert will fail
    with pytest.raises(StoreError, match="storing annotation 1 failed"):
        webhooks.handle_event(store, webhook("62_*__ml_webhook.json"))
    metadata.create_all(store.engine)
    assert store.get_annotation(1) is None  # the annotation row was rolled back too
    assert list(store.masks_dir.rglob("*.png")) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_data_dir_raises_store_error_naming_the_path(tmp_path):
    data = tmp_path / "ro"
    data.mkdir()
    data.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=str(data)):
            Store(data)
    finally:
        data.chmod(0o755)


def test_data_dir_under_a_file_raises_store_error_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"file/data/masks"):
        Store(tmp_path / "file" / "data")


# --- `squeezesam labels ...` (store/cli.py) ---------------------------------------------------


def run_labels_cli(*argv: str) -> int:
    import argparse

    from squeezesam.backend.store import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_labels_cli_stats_and_coco_export_on_an_empty_store(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZESAM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert run_labels_cli("labels", "stats") == 0
    assert json.loads(capsys.readouterr().out)["projects"] == {}
    assert run_labels_cli("labels", "export", "--format", "coco", "--out", str(tmp_path / "x")) == 0
    assert json.loads((tmp_path / "x" / "annotations.json").read_text())["images"] == []
