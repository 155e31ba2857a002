"""Dashboard figures against a hand-built history whose answers are worked out by hand.

The history is stored through the label store's public API (save_annotation,
record_clicks, mark_deleted) and store.runs.record_training_run; every expected number
below is derived in the comments from that history.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from squeezesam.backend.dashboard import figures, init_dashboard
from squeezesam.backend.store import Store
from squeezesam.backend.store.runs import record_training_run
from squeezesam.backend.store.schema import (
    AnnotationRecord,
    ClickRecord,
    ObjectRecord,
    annotations,
    clicks,
    objects,
)

from .conftest import open_store

P = 7  # the project under test; project 8 is noise
DAY1 = dt.datetime(2026, 3, 1)


def obj(origin: str) -> ObjectRecord:
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 255
    return ObjectRecord(label="Person", mask=mask, origin=origin)


def ann(aid, task, who, lead, when, origins, parent=None, version=None, project=P, **kw):
    return AnnotationRecord(
        annotation_id=aid, project_id=project, task_id=task, image_ref=f"/data/{task}.jpg",
        created_at=when, updated_at=when, annotator=who, lead_time=lead,
        parent_prediction=parent, model_version=version, objects=[obj(o) for o in origins], **kw,
    )  # fmt: skip


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, tzinfo=dt.UTC)


def seed_history(store: Store) -> None:
    pred, changed, manual = "prediction", "prediction-changed", "manual"
    for record in [
        # A1: annotator 1, 10 s, from prediction of v1: one object kept, one changed
        ann(1, 1000, 1, 10.0, at(1, 9, 15), [pred, changed], parent=100, version="v1"),
        # A2: annotator 1, 30 s, no prediction; its task's clicks were answered by v2
        ann(2, 1001, 1, 30.0, at(1, 9, 45), [manual]),
        # A3: annotator 2, 20 s, from prediction of v2: two kept, one drawn by hand
        ann(3, 1002, 2, 20.0, at(2, 14), [pred, pred, manual], parent=101, version="v2"),
        # A4: annotator 2, no lead time, no objects, no model at all -> "(none)"
        ann(4, 1003, 2, None, at(2, 15), []),
        # A9: annotator 2 on A1's task (overlap): version from that task's clicks (v1)
        ann(9, 1000, 2, 40.0, at(1, 11), [manual]),
        # excluded: cancelled, deleted, another project, before the period
        ann(5, 1004, 1, 5.0, at(1, 10), [], was_cancelled=True),
        ann(6, 1005, 1, 5.0, at(1, 10), [manual]),
        ann(7, 2000, 1, 5.0, at(1, 10), [manual], project=8),
        ann(8, 1006, 1, 5.0, dt.datetime(2026, 2, 27, tzinfo=dt.UTC), [manual]),
    ]:
        assert store.save_annotation(record) == "created"
    store.mark_deleted([6], P)
    # 3 clicks on task 1000 (v1), 2 on task 1001 (v2), 1 on project 8's task 2000
    store.served.record_clicks(
        P, 1000, [ClickRecord(10, 10, True, region_id=f"k{i}") for i in range(3)], "v1"
    )
    store.served.record_clicks(
        P, 1001, [ClickRecord(10, 10, True, region_id=f"m{i}") for i in range(2)], "v2"
    )
    store.served.record_clicks(8, 2000, [ClickRecord(10, 10, True, region_id="n0")], "v1")


PERIOD = figures.Period.parse(str(P), "2026-03-01", "2026-03-02")  # two whole days


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Store:
    s = open_store(request.param, tmp_path)  # PostgreSQL: with SQUEEZESAM_TEST_POSTGRES_URL
    seed_history(s)
    yield s
    s.close()


def test_period_parsing():
    assert (PERIOD.start, PERIOD.end) == (DAY1, dt.datetime(2026, 3, 3))
    p = figures.Period.parse(None, None, None, now=dt.datetime(2026, 3, 10))
    assert (p.project_id, p.start, p.end) == (
        None,
        dt.datetime(2026, 3, 3),
        dt.datetime(2026, 3, 10),
    )
    with pytest.raises(ValueError, match="before"):
        figures.Period.parse("1", "2026-03-05", "2026-03-01")
    with pytest.raises(ValueError, match="not a date"):
        figures.Period.parse("1", "yesterday", None)


def test_summary(store):
    s = figures.compute(store.engine, PERIOD)["summary"]
    # kept in period: A1 A2 A3 A4 A9; objects 2+1+3+0+1
    assert s["annotations"] == 5 and s["objects"] == 7 and s["annotators"] == 2
    assert s["median_lead_time_s"] == 25.0  # median(10, 30, 20, 40); A4 has none
    assert s["objects_per_hour"] == 252.0  # 7 objects in 100 s of lead time
    assert s["clicks"] == 5  # task 1000 once (3) + task 1001 (2)
    assert s["clicks_per_object"] == round(5 / 7, 2)
    # from prediction: A1 (1 kept, 1 changed) + A3 (2 kept) -> 3 of 4 unchanged
    assert s["from_prediction"] == 4 and s["accepted_unchanged"] == 0.75
    # nothing matched a served region: no IoU, never 1.0 by construction
    assert s["start_iou"] is None and s["start_iou_measured"] == 0
    assert s["start_iou_share"] == 0.0


def test_per_annotator(store):
    rows = figures.compute(store.engine, PERIOD)["annotators"]
    assert rows == [
        # A3 A4 A9: median(20, 40); 4 objects in 60 s
        {"annotator": 2, "annotations": 3, "objects": 4, "median_lead_time_s": 30.0,
         "objects_per_hour": 240.0},
        # A1 A2: median(10, 30); 3 objects in 40 s
        {"annotator": 1, "annotations": 2, "objects": 3, "median_lead_time_s": 20.0,
         "objects_per_hour": 270.0},
    ]  # fmt: skip


def test_per_model_version(store):
    rows = {r["model_version"]: r for r in figures.compute(store.engine, PERIOD)["versions"]}
    assert list(rows) == ["v1", "v2", "(none)"]  # in order of first use
    v1, v2, none = rows["v1"], rows["v2"], rows["(none)"]
    # v1: A1 + A9 (same task, its 3 clicks once); 3 objects in 50 s
    assert (v1["annotations"], v1["objects"], v1["clicks"]) == (2, 3, 3)
    assert (v1["median_lead_time_s"], v1["objects_per_hour"], v1["clicks_per_object"]) == (
        25.0, 216.0, 1.0)  # fmt: skip
    assert (v1["accepted_unchanged"], v1["start_iou"], v1["first_seen"]) == (
        0.5, None, "2026-03-01 09:15")  # fmt: skip
    # v2: A2 (by its clicks) + A3; 4 objects in 50 s; 2 clicks
    assert (v2["annotations"], v2["objects"], v2["clicks_per_object"]) == (2, 4, 0.5)
    assert (v2["objects_per_hour"], v2["accepted_unchanged"], v2["start_iou_measured"]) == (
        288.0, 1.0, 0)  # fmt: skip
    # (none): A4 only, nothing measurable
    assert (none["annotations"], none["objects"], none["median_lead_time_s"]) == (1, 0, None)
    assert none["clicks_per_object"] is None and none["accepted_unchanged"] is None


def test_per_day_and_per_hour(store):
    data = figures.compute(store.engine, PERIOD)
    assert data["per_day"] == [
        {"time": "2026-03-01 00:00", "annotations": 3, "objects": 4},  # A1 A2 A9
        {"time": "2026-03-02 00:00", "annotations": 2, "objects": 3},  # A3 A4
    ]
    hours = {
        r["time"]: (r["annotations"], r["objects"]) for r in data["per_hour"] if r["annotations"]
    }
    assert len(data["per_hour"]) == 48
    assert hours == {"2026-03-01 09:00": (2, 3), "2026-03-01 11:00": (1, 1),
                     "2026-03-02 14:00": (1, 3), "2026-03-02 15:00": (1, 0)}  # fmt: skip


def test_iou_prediction_to_final_covers_matched_objects_only_and_says_how_many(store):
    """`objects.start_iou` measured against a served pre-annotation: A1's changed object
    started from a 0.6 IoU mask. The three objects Label Studio calls `prediction` matched
    no served region: they have no IoU (they used to count 1 each, so the figure read
    ~1.0 by construction), and the share beside the figure says it covers 1 of 4."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE objects SET start_iou = 0.6, start_kind = 'preannotation', "
            "start_label = label WHERE origin = 'prediction-changed'"
        )
    s = figures.compute(store.engine, PERIOD)["summary"]
    assert s["start_iou_measured"] == 1 and s["start_iou"] == 0.6
    assert s["from_prediction"] == 4 and s["start_iou_share"] == 0.25
    assert s["accepted_unchanged"] == round(3 / 4, 3)


def test_acceptance_from_served_regions_split_by_version(tmp_path):
    """Webhooks carry no prediction: the store matched the final objects with what it
    served (served_regions) and measured. Worked out by hand:
    A20 (task 3000, served v1 x3): one kept as served, one changed (IoU 0.5), one deleted;
      Label Studio's origin says `prediction` for all (the masks decide, not the origin).
    A21 (task 3001, served v2 x1): kept as served but relabelled -> changed, IoU 1.
    A22 (task 3002, served v2 x1 by a click): not a pre-annotation, left out.
    v1: 3 served, 1 unchanged -> 1/3; start IoU (1 + 0.5) / 2.  v2: 0/1, IoU 1."""
    from squeezesam.backend.labelstudio import brush_result, parse_label_config, prediction

    config = parse_label_config(
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Person"/><Label value="Pet"/></BrushLabels></View>'
    )
    square = np.zeros((8, 8), np.uint8)
    square[0:4, 0:4] = 1
    half = np.zeros((8, 8), np.uint8)
    half[0:4, 0:2] = 1  # IoU with square: 8 / 16 (rolled along: with `other`)
    other, third = np.roll(square, 4, axis=1), np.roll(square, 4, axis=0)

    def served(task, masks, version, kind="preannotation"):
        item = prediction([brush_result(m > 0, "Person", 0.9, config) for m in masks], 0.9,
                          version)  # fmt: skip
        assert s.served.record_served_item(task, item, kind) == len(masks)
        return item["result"]

    def final(aid, task, regions, when):
        objs = [ObjectRecord(label=lab, mask=m * 255, region_id=r["id"], origin="prediction")
                for r, m, lab in regions]  # fmt: skip
        record = ann(aid, task, 1, 10.0, when, [], parent=1)
        record.objects = objs
        assert s.save_annotation(record) == "created"

    s = Store(tmp_path / "data")
    r20 = served(3000, [square, other, third], "v1")
    r21 = served(3001, [square], "v2")
    r22 = served(3002, [square], "v2", kind="click")
    edited = np.roll(half, 4, axis=1)  # `other` halved
    final(20, 3000, [(r20[0], square, "Person"), (r20[1], edited, "Person")], at(1, 9))
    final(21, 3001, [(r21[0], square, "Pet")], at(1, 10))
    final(22, 3002, [(r22[0], square, "Person")], at(1, 11))
    out = figures.compute(s.engine, PERIOD)
    by_version = {v["model_version"]: v for v in out["versions"]}
    assert by_version["v1"]["from_prediction"] == 3
    assert by_version["v1"]["accepted_unchanged"] == round(1 / 3, 3)
    assert by_version["v1"]["start_iou"] == round((1 + 0.5) / 2, 3)
    assert by_version["v1"]["start_iou_measured"] == 2
    assert by_version["v1"]["start_iou_share"] == round(2 / 3, 3)  # the deleted one: no IoU
    assert by_version["v2"]["accepted_unchanged"] == 0.0
    assert by_version["v2"]["start_iou"] == 1.0 and by_version["v2"]["start_iou_measured"] == 1
    assert out["summary"]["from_prediction"] == 4
    s.close()


def test_training_runs_for_the_project_and_period(store):
    def run(project, day, **kw):
        return record_training_run(store.engine, project=project, started_at=at(day, 20),
                                   status="finished", **kw)  # fmt: skip

    run(P, 1, data_size=3, duration_s=600.0, candidate_version="v2", current_version="v1",
        metrics={"candidate": {"noc90": 3.1}, "current": {"noc90": 3.6}}, decision="promoted",
        reason="NoC@90 improved by 0.5")  # fmt: skip
    run(None, 2, decision="rejected", reason="no better")  # all projects: shown too
    run(8, 2)  # another project
    run(P, 5)  # after the period
    rows = figures.compute(store.engine, PERIOD)["training_runs"]
    assert [(r["started_at"], r["decision"]) for r in rows] == [
        ("2026-03-02 20:00", "rejected"), ("2026-03-01 20:00", "promoted")]  # fmt: skip
    assert rows[1]["metrics"] == {"candidate": {"noc90": 3.1}, "current": {"noc90": 3.6}}


def test_empty_store_gives_zeros_and_empty_tables(tmp_path):
    data = figures.compute(Store(tmp_path).engine, PERIOD)
    assert data["summary"]["annotations"] == 0 and data["summary"]["median_lead_time_s"] is None
    assert data["annotators"] == data["versions"] == data["training_runs"] == []
    assert sum(r["annotations"] for r in data["per_day"]) == 0


def test_csv_and_json_endpoints(store):
    from flask import Flask

    app = Flask("t")
    init_dashboard(app, engine=store.engine)
    client = app.test_client()
    q = "?project=7&from=2026-03-01&to=2026-03-02"
    body = client.get("/dashboard/annotators.csv" + q)
    assert body.status_code == 200 and body.mimetype == "text/csv"
    lines = body.get_data(as_text=True).splitlines()
    # no Label Studio configured here: the names are the ids (annotators.py)
    assert lines[0] == "annotator,annotations,objects,median_lead_time_s,objects_per_hour,name"
    assert lines[1:] == ["2,3,4,30.0,240.0,user 2", "1,2,3,20.0,270.0,user 1"]
    assert client.get("/dashboard/data.json" + q).get_json()["summary"]["objects"] == 7
    assert client.get("/dashboard/nope.csv" + q).status_code == 404
    assert client.get("/dashboard/data.json?from=garbage").status_code == 400
    page = client.get("/dashboard/" + q).get_data(as_text=True)
    assert "No accepted labels" not in page and 'id="table-versions"' in page
    empty = client.get("/dashboard/?project=7&from=2025-01-01&to=2025-01-02").get_data(as_text=True)
    assert "No accepted labels in this period" in empty


# --- a big project ----------------------------------------------------------------------


def seed_bulk(store: Store, n: int, seed: int = 0) -> figures.Period:
    """n annotations (2 objects each, a click per 2 tasks) over 30 days, via the tables."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 1, 1)
    origins = ["prediction", "prediction-changed", "manual", None]
    a_rows, o_rows, c_rows = [], [], []
    for i in range(n):
        when = start + dt.timedelta(seconds=rng.randrange(30 * 86400))
        a_rows.append(dict(annotation_id=i + 1, project_id=1, task_id=i + 1,
                           annotator=rng.randrange(20),
                           lead_time=rng.uniform(5, 120), created_at=when, updated_at=when,
                           was_cancelled=False, deleted=False, stored_at=when,
                           model_version=f"v{i * 4 // n}"))  # fmt: skip
        for k in (1, 2):
            o_rows.append(dict(annotation_id=i + 1, number=k, label="Person", width=8, height=8,
                               area=10, mask_path="x.png", origin=rng.choice(origins)))  # fmt: skip
        if i % 2 == 0:
            c_rows.append(dict(project_id=1, task_id=i + 1, region_id="r", x=1.0, y=1.0,
                               is_positive=True, model_version="v0", created_at=when))  # fmt: skip
    with store.engine.begin() as conn:
        for table, rows in ((annotations, a_rows), (objects, o_rows), (clicks, c_rows)):
            conn.execute(table.insert(), rows)
    return figures.Period(1, start, start + dt.timedelta(days=30))


def _timed_compute(store: Store, period: figures.Period) -> tuple[float, dict]:
    """CPU seconds of one compute (SQLite runs in this process, so that is all of it).

    CPU time rather than wall time: on a shared 2-core CI machine with a training run
    beside it, wall time measures the neighbours (load 9 made 0.55 s of CPU take 1.2 s)."""
    figures.compute(store.engine, period)  # warm: table creation, connection
    began, wall = time.process_time(), time.perf_counter()
    data = figures.compute(store.engine, period)
    seconds = time.process_time() - began
    print(
        f"\n{len(data['annotators'])} annotators: {seconds * 1000:.0f} ms CPU, "
        f"{(time.perf_counter() - wall) * 1000:.0f} ms wall"
    )
    return seconds, data


def test_figures_on_5k_annotations_are_fast(tmp_path):
    store = Store(tmp_path)
    period = seed_bulk(store, 5_000)
    seconds, data = _timed_compute(store, period)
    assert data["summary"]["annotations"] == 5_000 and data["summary"]["objects"] == 10_000
    assert sum(r["annotations"] for r in data["per_hour"]) == 5_000
    assert seconds < 1.0, f"5k annotations took {seconds:.2f} s"


@pytest.mark.slow
def test_figures_on_100k_annotations_take_under_a_second(tmp_path):
    store = Store(tmp_path)
    period = seed_bulk(store, 100_000)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(objects)).scalar() == 200_000
    seconds, data = _timed_compute(store, period)
    assert data["summary"]["annotations"] == 100_000 and len(data["versions"]) == 4
    assert seconds < 1.0, f"100k annotations took {seconds:.2f} s"
