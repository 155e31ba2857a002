"""The dashboard's one scan of the label store: one row per kept annotation of a period.

One SQL query reads one row per kept annotation (not deleted, not cancelled) with its
object counts already aggregated in SQL, a second one the clicks per task; both are
merged in numpy into parallel arrays (`Rows`), which dashboard/figures.py turns into
every figure. One scan serves all figures, so the tables agree with each other, and 100k
annotations take a fraction of a second (the benchmark test). The definitions of
"unchanged", "start IoU" and "model version" are listed in dashboard/figures.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from squeezesam.backend.store.schema import annotations, clicks, objects

NO_VERSION = "(none)"
UNCHANGED_IOU = 0.999  # start IoU at or above this (and the served label) is "unchanged"
UNKNOWN_ANNOTATOR = "(unknown)"


@dataclass(frozen=True)
class Span:
    """A project (None: all) and a half-open UTC interval [start, end): what to scan."""

    project_id: int | None
    start: dt.datetime
    end: dt.datetime


@dataclass
class Rows:
    """One entry per kept annotation of the period (parallel numpy arrays)."""

    annotator: np.ndarray  # object: int id or UNKNOWN_ANNOTATOR
    lead_time: np.ndarray  # float seconds, NaN when unknown
    t: np.ndarray  # float unix seconds
    version: np.ndarray  # object: str
    task: np.ndarray  # int64
    n_objects: np.ndarray  # int64
    n_unchanged: np.ndarray  # objects with origin 'prediction'
    n_changed: np.ndarray  # origin 'prediction-changed', changed or deleted served objects
    iou_sum: np.ndarray  # sum of the start IoUs of matched objects (served regions)
    iou_n: np.ndarray  # matched objects (with a measured start IoU)
    task_clicks: np.ndarray  # clicks on the annotation's task

    def __len__(self) -> int:
        return len(self.t)


def _has_start_iou(conn: Connection) -> bool:
    """A store that records what it served (every store opened since those columns)."""
    return "start_kind" in {c["name"] for c in sa.inspect(conn).get_columns("objects")}


def _times(conn: Connection, when: Any) -> tuple[Any, Any]:
    """SQL for the label time, and how to turn the fetched column into unix seconds.

    SQLite: the stored text itself (CAST skips SQLAlchemy's per-row datetime parsing;
    numpy parses 100k ISO strings in ~10 ms, exactly, unlike julianday's float days).
    PostgreSQL: EXTRACT(EPOCH) of the naive UTC timestamp."""
    if conn.dialect.name == "sqlite":

        def parse(col: tuple) -> np.ndarray:
            stamps = np.array(col, dtype="datetime64[us]")
            return stamps.astype(np.int64) / 1e6

        return sa.cast(when, sa.String), parse
    return sa.extract("epoch", when), lambda col: np.array(col, dtype=np.float64)


def _columns(conn: Connection, query: Any, n: int) -> list[tuple]:
    """The result as n column tuples, fetched from the DBAPI cursor: building 100k
    SQLAlchemy Row objects cost more than the query itself. No result processing is
    lost: times come as text or numbers (see _times), the rest are plain numbers."""
    result = conn.execute(query)
    try:
        rows = result.cursor.fetchall()
    finally:
        result.close()
    return list(zip(*rows, strict=True)) if rows else [()] * n


def _lookup(keys: np.ndarray, table_keys: np.ndarray, values: np.ndarray, missing: Any):
    """values[table_keys == key] for each key (table_keys sorted), `missing` when absent."""
    if not len(table_keys):
        return np.full(len(keys), missing, dtype=values.dtype)
    pos = np.clip(np.searchsorted(table_keys, keys), 0, len(table_keys) - 1)
    return np.where(table_keys[pos] == keys, values[pos], missing)


def load_rows(conn: Connection, period: Span) -> Rows:
    """Annotations with their object counts (one query), clicks per task (a second one),
    merged by task id in numpy. Measured on SQLite, 100k annotations: this shape beat one
    query joining clicks too, a GROUP BY over the annotation-objects join, and correlated
    subqueries; the object aggregate is limited to the project, so other projects' size
    does not matter."""
    a, o, c = annotations.c, objects.c, clicks.c
    when = sa.func.coalesce(a.created_at, a.updated_at)
    kept = sa.and_(a.deleted.is_(False), a.was_cancelled.is_(False), when >= period.start,
                   when < period.end)  # fmt: skip
    owner = annotations.alias("owner")
    if period.project_id is not None:
        kept = sa.and_(a.project_id == period.project_id, kept)
    with_iou = _has_start_iou(conn)
    if with_iou:  # the store measured against what it served: that decides first
        kind = sa.literal_column("objects.start_kind")
        start_iou = sa.literal_column("objects.start_iou")
        served = kind == "preannotation"
        same = sa.and_(served, start_iou >= UNCHANGED_IOU,
                       o.label == sa.literal_column("objects.start_label"))  # fmt: skip
        by_origin = kind.is_(None)
        unchanged = sa.func.sum(sa.case(
            (same, 1), (sa.and_(by_origin, o.origin == "prediction"), 1), else_=0))  # fmt: skip
        changed = sa.func.sum(sa.case(
            (served, sa.case((same, 0), else_=1)),
            (sa.and_(by_origin, o.origin == "prediction-changed"), 1), else_=0))  # fmt: skip
        # start IoU over matched objects only (a served region, measured by the store): an
        # object matched to nothing has no IoU, however Label Studio's origin reads
        iou = sa.case((served, start_iou))
        iou_cols = [sa.func.sum(iou).label("iou_sum"), sa.func.count(iou).label("iou_n")]
    else:  # nothing was matched to what was served: no IoU known (zeros below)
        unchanged = sa.func.sum(sa.case((o.origin == "prediction", 1), else_=0))
        changed = sa.func.sum(sa.case((o.origin == "prediction-changed", 1), else_=0))
        iou_cols = []
    per_annotation = sa.select(
        o.annotation_id,
        sa.func.count().label("n"),
        unchanged.label("unchanged"),
        changed.label("changed"),
        *iou_cols,
    )
    per_annotation = per_annotation.select_from(objects.join(
        owner, owner.c.annotation_id == o.annotation_id))  # fmt: skip
    if period.project_id is not None:
        per_annotation = per_annotation.where(owner.c.project_id == period.project_id)
    sub = per_annotation.group_by(o.annotation_id).subquery()
    time_sql, to_seconds = _times(conn, when)
    fields = [a.annotator, a.lead_time, time_sql, a.model_version, a.task_id, sub.c.n,
              sub.c.unchanged, sub.c.changed]  # fmt: skip
    if with_iou:
        fields += [sub.c.iou_sum, sub.c.iou_n, sa.literal_column("annotations.served_deleted")]
    query = sa.select(*fields).select_from(
        annotations.outerjoin(sub, sub.c.annotation_id == a.annotation_id)).where(kept)  # fmt: skip
    col = _columns(conn, query, len(fields))

    per_task = sa.select(c.task_id, sa.func.count(), sa.func.max(c.model_version))
    if period.project_id is not None:
        per_task = per_task.where(c.project_id == period.project_id)
    clk = _columns(conn, per_task.group_by(c.task_id).order_by(c.task_id), 3)
    task = np.array(col[4], dtype=np.int64)
    click_tasks = np.array(clk[0], dtype=np.int64)

    def count(i: int, dtype: Any = np.float64) -> np.ndarray:  # NULL (no objects) -> 0
        return np.nan_to_num(np.array(col[i], dtype=np.float64)).astype(dtype)

    # version: the prediction's, else the one that answered the task's clicks
    click_version = _lookup(task, click_tasks, np.array(clk[2], dtype=object), None)
    version = np.array(col[3], dtype=object)
    version = np.where(version == None, click_version, version)  # noqa: E711 (elementwise)
    version = np.where(version == None, NO_VERSION, version)  # noqa: E711
    annotator = np.array(col[0], dtype=object)
    n_unchanged = count(6, np.int64)
    return Rows(
        annotator=np.where(annotator == None, UNKNOWN_ANNOTATOR, annotator),  # noqa: E711
        lead_time=np.array(col[1], dtype=np.float64), t=to_seconds(col[2]),
        version=version, task=task, n_objects=count(5, np.int64), n_unchanged=n_unchanged,
        # served pre-annotation objects the annotator deleted count as changed
        n_changed=count(7, np.int64) + (count(10, np.int64) if with_iou else 0),
        iou_sum=count(8) if with_iou else np.zeros(len(task)),
        iou_n=count(9, np.int64) if with_iou else np.zeros(len(task), np.int64),
        task_clicks=_lookup(task, click_tasks, np.array(clk[1], dtype=np.int64), 0),
    )  # fmt: skip
