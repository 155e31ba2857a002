"""What the annotator started from: served regions recorded, start IoU measured on the
final masks, deleted served objects counted, and old databases given the new columns.
SQLite always, PostgreSQL when SQUEEZESAM_TEST_POSTGRES_URL is set (as test_store.py)."""

from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa
from label_studio_sdk.converter.brush import mask2rle

from squeezesam.backend import webhooks
from squeezesam.backend.labelstudio import brush_result, parse_label_config, prediction
from squeezesam.backend.store import Store
from squeezesam.backend.store.schema import ADDED_COLUMNS, objects

from .conftest import open_store
from .test_store import brush_payload, real_objects

CONFIG = parse_label_config(
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Person"/><Label value="Pet"/></BrushLabels></View>'
)
TASK = 1  # capture 62's task


def served_item(masks: list[tuple[np.ndarray, str]], version: str = "v7") -> dict:
    """A /predict item as the workers build it (brush_result gives each region an id)."""
    results = [brush_result(m > 0, label, 0.9, CONFIG) for m, label in masks]
    return prediction(results, 0.9, version)


def annotation_from(item: dict, keep: list[tuple[int, np.ndarray | None, str]]) -> dict:
    """ANNOTATION_CREATED whose brush regions are served regions `index` (their ids), with
    the mask replaced when given (the annotator edited it) and the label as given."""
    payload = brush_payload([(np.zeros((2, 2), np.uint8) + 1, "Person")] * len(keep))
    for region, (index, mask, label) in zip(payload["annotation"]["result"], keep, strict=True):
        served = item["result"][index]
        region.update(copy.deepcopy({k: served[k] for k in (
            "id", "value", "original_width", "original_height")}))  # fmt: skip
        region["value"]["brushlabels"] = [label]
        if mask is not None:
            region["value"]["rle"] = mask2rle(np.where(mask > 0, 255, 0).astype(np.uint8))
        region["origin"] = "prediction"  # whatever the client says: the masks decide
    return payload


def start_columns(store: Store) -> list[dict]:
    with store.engine.begin() as conn:
        rows = conn.execute(sa.select(objects).order_by(objects.c.number)).all()
    return [dict(r._mapping) for r in rows]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a > 0, b > 0).sum() / np.logical_or(a > 0, b > 0).sum())


def test_served_regions_are_recorded_once_per_task_and_region(store):
    index, objs = real_objects()
    item = served_item([(index == k, "Person") for k, _ in objs[:2]])
    assert store.served.record_served_item(TASK, item, "preannotation") == 2
    assert store.served.record_served_item(TASK, item, "preannotation") == 0  # a cached resend
    rows = store.served.served_for_task(TASK)
    assert {r["region_id"] for r in rows} == {r["id"] for r in item["result"]}
    assert {(r["kind"], r["model_version"], r["label"]) for r in rows} == {
        ("preannotation", "v7", "Person")}  # fmt: skip
    # malformed items are skipped, never raised
    assert store.served.record_served_item(TASK, '{"result": [{"type": "brushlabels"}]}', "x") == 0
    assert store.served.record_served_item(TASK, "not json", "click") == 0


def test_accepted_unchanged_gets_iou_1_and_the_version(store):
    index, objs = real_objects()
    item = served_item([(index == k, "Person") for k, _ in objs[:2]])
    store.served.record_served_item(TASK, item, "preannotation")
    payload = annotation_from(item, [(0, None, "Person"), (1, None, "Person")])
    assert payload["annotation"]["prediction"] == {}  # as Label Studio sends it
    assert webhooks.handle_event(store, payload)["result"] == "created"
    rows = start_columns(store)
    assert [r["start_iou"] for r in rows] == [1.0, 1.0]
    assert {(r["start_model_version"], r["start_kind"]) for r in rows} == {("v7", "preannotation")}
    stored = store.get_annotation(50)
    assert stored["model_version"] == "v7" and stored["served_deleted"] == 0


def test_changed_object_gets_the_true_iou_and_deleted_ones_are_counted(store):
    index, objs = real_objects()
    assert len(objs) >= 3
    served = [(index == k, "Person") for k, _ in objs[:3]]
    item = served_item(served)
    store.served.record_served_item(TASK, item, "preannotation")
    store.served.record_served_item(TASK, served_item(served[:1], "v8"), "click")  # not this batch
    # the annotator grows object 0 by its neighbour object 2's pixels, relabels object 1,
    # deletes object 2 and draws one by hand
    edited = np.logical_or(served[0][0], index == objs[2][0])
    payload = annotation_from(item, [(0, edited, "Person"), (1, None, "Pet")])
    manual = copy.deepcopy(payload["annotation"]["result"][1])
    manual["id"], manual["origin"] = "drawn-by-hand", "manual"
    payload["annotation"]["result"].append(manual)
    webhooks.handle_event(store, payload)
    rows = start_columns(store)
    assert rows[0]["start_iou"] == pytest.approx(iou(served[0][0], edited), abs=1e-9)
    assert rows[0]["start_iou"] < 1.0
    assert rows[1]["start_iou"] == 1.0 and rows[1]["start_label"] == "Person"
    assert rows[1]["label"] == "Pet"
    assert rows[2]["start_iou"] is None and rows[2]["start_kind"] is None
    assert store.get_annotation(50)["served_deleted"] == 1


def test_nothing_served_leaves_the_columns_empty(store):
    webhooks.handle_event(store, brush_payload([(np.ones((3, 3), np.uint8), "Person")]))
    [row] = start_columns(store)
    assert row["start_iou"] is None and store.get_annotation(50)["served_deleted"] is None


def test_a_broken_served_row_never_fails_the_label(store):
    index, objs = real_objects()
    item = served_item([(index == objs[0][0], "Person")])
    store.served.record_served_item(TASK, item, "preannotation")
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE served_regions SET rle = '[1, 2, 3]'")
    assert webhooks.handle_event(store, annotation_from(item, [(0, None, "Person")]))[
        "result"] == "created"  # fmt: skip
    assert start_columns(store)[0]["start_iou"] is None


def test_old_retention_rows_are_dropped(store):
    index, objs = real_objects()
    store.served.record_served_item(5, served_item([(index == objs[0][0], "Person")]), "click")
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE served_regions SET served_at = :t"),
                     {"t": dt.datetime(2000, 1, 1)})  # fmt: skip
    store.served.record_served_item(TASK, served_item([(index == objs[1][0], "Pet")]), "click")
    assert store.served.served_for_task(5) == [] and len(store.served.served_for_task(TASK)) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_old_database_gets_the_new_columns(kind, tmp_path):
    s = open_store(kind, tmp_path)  # a fresh database (PostgreSQL: emptied)
    url = str(s.engine.url.render_as_string(hide_password=False))
    s.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # back to the schema before the start columns
        for table, name in ADDED_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} DROP COLUMN {name}")
    before = {c["name"] for c in sa.inspect(engine).get_columns("objects")}
    assert "start_iou" not in before
    engine.dispose()
    database = "" if kind == "sqlite" else url
    for _ in range(2):  # idempotent: the second open finds them
        reopened = Store(tmp_path / "data", database)
        webhooks.handle_event(reopened, brush_payload([(np.ones((3, 3), np.uint8), "Person")]))
        reopened.close()
    engine = sa.create_engine(url)
    for table, name in ADDED_COLUMNS:
        assert name in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    engine.dispose()
