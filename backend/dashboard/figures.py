"""Every figure of the dashboard, from the label store's tables.

One SQL query per period reads one row per kept annotation (not deleted, not cancelled)
with its object counts and its task's click count already aggregated in SQL; every
figure is then numpy over those arrays. One scan serves all figures, so the tables agree
with each other, and 100k annotations take a fraction of a second (the benchmark test).

Definitions (the dashboard's help text says the same):
- time of a label: the annotation's `created_at` (Label Studio's, UTC), else `updated_at`;
- time per task: Label Studio's `lead_time` (seconds the annotator spent), median;
- objects per hour: objects / (sum of lead_time of the annotations that have one);
- clicks per object: clicks recorded on the tasks / objects in their annotations; a task
  with two annotations counts its clicks once;
- accepted unchanged: pre-annotation objects accepted without change / pre-annotation
  objects served. Where the store knows what it served (`served_regions`, matched by
  region id: `objects.start_kind = 'preannotation'`), an object is unchanged when its
  start IoU is at least UNCHANGED_IOU and its label is the served one, and the served
  objects the annotator deleted (`annotations.served_deleted`) count as changed; for
  other objects Label Studio's `origin` decides (`prediction` unchanged,
  `prediction-changed` changed);
- start IoU: IoU between the pre-annotation the annotator started from and the final
  mask (`objects.start_iou`, measured by the store), or 1 for an object whose origin is
  `prediction` and which matched no served region; the table says for how many objects
  the IoU is known;
- model version of an annotation: the version of its parent prediction, else the
  version that answered the clicks on its task, else "(none)".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from squeezesam.backend.events import ensure_training_runs, training_runs
from squeezesam.backend.store_schema import annotations, clicks, objects

NO_VERSION = "(none)"
UNCHANGED_IOU = 0.999  # start IoU at or above this (and the served label) is "unchanged"
UNKNOWN_ANNOTATOR = "(unknown)"
DEFAULT_DAYS = 7


@dataclass(frozen=True)
class Period:
    """A project and a half-open UTC interval [start, end)."""

    project_id: int | None
    start: dt.datetime
    end: dt.datetime

    @classmethod
    def parse(
        cls,
        project: str | int | None,
        start: str | None,
        end: str | None,
        now: dt.datetime | None = None,
    ) -> Period:
        """`from`/`to` as YYYY-MM-DD (whole days, `to` inclusive) or ISO times, UTC.

        Defaults: the last DEFAULT_DAYS days up to now. Raises ValueError on bad input.
        """
        now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        stop = _parse_time(end, end_of_day=True) if end else now
        begin = _parse_time(start) if start else stop - dt.timedelta(days=DEFAULT_DAYS)
        if begin >= stop:
            raise ValueError(
                f"'from' ({begin:%Y-%m-%d %H:%M}) must be before 'to' ({stop:%Y-%m-%d %H:%M})"
            )  # noqa: E501
        pid = int(project) if project not in (None, "") else None
        return cls(pid, begin, stop)


def _parse_time(text: str, end_of_day: bool = False) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD) or ISO time: {text!r}") from None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    if end_of_day and len(text.strip()) == 10:  # a bare date: include that whole day
        value += dt.timedelta(days=1)
    return value


def read_engine(engine: Engine) -> Engine:
    """An engine for reading. The store's SQLite engine opens every transaction with
    BEGIN IMMEDIATE (the write lock); a dashboard read holding that lock would make a
    webhook wait, so SQLite reads go through a plain engine on the same file (WAL lets
    readers and the writer run side by side). PostgreSQL reads use the store's engine."""
    if engine.dialect.name != "sqlite":
        return engine
    cached = _read_engines.get(id(engine))
    if cached is None:
        cached = sa.create_engine(engine.url, connect_args={"timeout": 10})
        _read_engines[id(engine)] = cached
    return cached


_read_engines: dict[int, Engine] = {}


# --- the one scan ----------------------------------------------------------------------


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
    iou_sum: np.ndarray  # sum of measured start IoUs (unchanged objects count 1)
    iou_n: np.ndarray  # objects with a measured start IoU
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


def load_rows(conn: Connection, period: Period) -> Rows:
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
        iou = sa.case((served, start_iou), (sa.and_(by_origin, o.origin == "prediction"), 1.0))
        iou_cols = [sa.func.sum(iou).label("iou_sum"), sa.func.count(iou).label("iou_n")]
    else:  # only unchanged objects have a known IoU (1.0): derived below, not fetched
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
        iou_sum=count(8) if with_iou else n_unchanged.astype(np.float64),
        iou_n=count(9, np.int64) if with_iou else n_unchanged,
        task_clicks=_lookup(task, click_tasks, np.array(clk[1], dtype=np.int64), 0),
    )  # fmt: skip


# --- figures over the rows -----------------------------------------------------------------


def _ratio(num: float, den: float, digits: int = 3) -> float | None:
    return round(float(num) / float(den), digits) if den else None


def _median(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(np.median(values)), 2) if len(values) else None


def _group_figures(r: Rows, sel: np.ndarray) -> dict[str, Any]:
    """Figures for the annotations selected by the boolean mask `sel`."""
    lead = r.lead_time[sel]
    has_lead = ~np.isnan(lead)
    objs = r.n_objects[sel]
    hours = float(lead[has_lead].sum()) / 3600.0
    _, first = np.unique(r.task[sel], return_index=True)  # each task's clicks once
    n_clicks = int(r.task_clicks[sel][first].sum())
    unchanged, changed = int(r.n_unchanged[sel].sum()), int(r.n_changed[sel].sum())
    iou_n = int(r.iou_n[sel].sum())
    return {
        "annotations": int(sel.sum()),
        "objects": int(objs.sum()),
        "median_lead_time_s": _median(lead),
        "objects_per_hour": _ratio(objs[has_lead].sum(), hours, 1),
        "clicks": n_clicks,
        "clicks_per_object": _ratio(n_clicks, objs.sum(), 2),
        "from_prediction": unchanged + changed,
        "accepted_unchanged": _ratio(unchanged, unchanged + changed),
        "start_iou": _ratio(float(r.iou_sum[sel].sum()), iou_n),
        "start_iou_measured": iou_n,
    }


def summary(r: Rows) -> dict[str, Any]:
    out = _group_figures(r, np.ones(len(r), dtype=bool))
    out["annotators"] = len(set(r.annotator.tolist()))
    return out


def per_annotator(r: Rows) -> list[dict[str, Any]]:
    rows = []
    for who in sorted(set(r.annotator.tolist()), key=str):
        fig = _group_figures(r, r.annotator == who)
        rows.append({"annotator": who, "annotations": fig["annotations"],
                     "objects": fig["objects"], "median_lead_time_s": fig["median_lead_time_s"],
                     "objects_per_hour": fig["objects_per_hour"]})  # fmt: skip
    return sorted(rows, key=lambda x: -x["annotations"])


def per_version(r: Rows) -> list[dict[str, Any]]:
    """One row per model version, in the order the versions first appear in time."""
    rows = []
    for version in set(r.version.tolist()):
        sel = r.version == version
        fig = _group_figures(r, sel)
        fig["model_version"] = version
        fig["first_seen"] = _iso(float(r.t[sel].min()))
        fig["last_seen"] = _iso(float(r.t[sel].max()))
        rows.append(fig)
    return sorted(rows, key=lambda x: (x["first_seen"], x["model_version"]))


def per_bucket(r: Rows, period: Period, seconds: int) -> list[dict[str, Any]]:
    """Labels per hour (3600) or per day (86400), every bucket of the period, zeros kept."""
    start = _utc(period.start).timestamp()
    first = np.floor(start / seconds) * seconds
    count = int(np.ceil((_utc(period.end).timestamp() - first) / seconds))
    index = ((r.t - first) // seconds).astype(np.int64)
    ok = (index >= 0) & (index < count)
    n_ann = np.bincount(index[ok], minlength=count)
    n_obj = np.bincount(index[ok], weights=r.n_objects[ok], minlength=count)
    return [{"time": _iso(first + i * seconds), "annotations": int(n_ann[i]),
             "objects": int(n_obj[i])} for i in range(count)]  # fmt: skip


def _utc(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=dt.UTC)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M")


# --- all of it ---------------------------------------------------------------------------

TABLES = ("per_hour", "per_day", "annotators", "versions", "training_runs")


def projects(conn: Connection) -> list[dict[str, Any]]:
    """Projects with kept annotations, the most recently labelled first."""
    a = annotations.c
    query = (
        sa.select(a.project_id, sa.func.count(), sa.func.max(a.created_at))
        .where(a.deleted.is_(False), a.project_id.is_not(None))
        .group_by(a.project_id)
        .order_by(sa.func.max(a.created_at).desc())
    )
    return [{"project": p, "annotations": n} for p, n, _ in conn.execute(query)]


def compute(engine: Engine, period: Period) -> dict[str, Any]:
    """Every figure and table of the dashboard for one period (JSON-able)."""
    ensure_training_runs(engine)
    with read_engine(engine).connect() as conn:
        r = load_rows(conn, period)
        runs = training_runs(conn, period.project_id, period.start, period.end)
    for run in runs:
        for key in ("started_at", "finished_at"):
            run[key] = run[key].strftime("%Y-%m-%d %H:%M") if run[key] else ""
        run.pop("metrics_json", None)
    return {
        "project": period.project_id,
        "from": period.start.strftime("%Y-%m-%d %H:%M"),
        "to": period.end.strftime("%Y-%m-%d %H:%M"),
        "summary": summary(r),
        "per_hour": per_bucket(r, period, 3600),
        "per_day": per_bucket(r, period, 86400),
        "annotators": per_annotator(r),
        "versions": per_version(r),
        "training_runs": runs,
    }
