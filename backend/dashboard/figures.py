"""Every figure of the dashboard, from the label store's one scan (store/label_rows.py).

The store reads one row per kept annotation (not deleted, not cancelled) of the period
with its object counts and its task's click count; every figure is numpy over those
arrays. One scan serves all figures, so the tables agree with each other.

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
  mask (`objects.start_iou`, measured by the store), over the *matched* objects only
  (their region id is one the store served). Objects from predictions that matched no
  served region have no IoU and are left out (counting them as 1 when "unchanged" read
  1.0 by construction); `start_iou_share` is the share of objects from predictions the
  figure covers (matched / from_prediction), shown beside it;
- model version of an annotation: the version of its parent prediction, else the
  version that answered the clicks on its task, else "(none)".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from squeezesam.backend.store.label_rows import Rows, Span, load_rows
from squeezesam.backend.store.reads import projects, reading
from squeezesam.backend.store.runs import training_runs

DEFAULT_DAYS = 7
MAX_DAYS = 366  # the default of DASHBOARD_MAX_DAYS
__all__ = ["TABLES", "Period", "compute", "projects"]


@dataclass(frozen=True)
class Period(Span):
    """A project and a half-open UTC interval [start, end), parsed from the page's query."""

    @classmethod
    def parse(
        cls,
        project: str | int | None,
        start: str | None,
        end: str | None,
        now: dt.datetime | None = None,
        max_days: int = MAX_DAYS,
    ) -> Period:
        """`from`/`to` as YYYY-MM-DD (whole days, `to` inclusive) or ISO times, UTC.

        Defaults: the last DEFAULT_DAYS days up to now. Raises ValueError on bad input,
        on dates outside 0001..9999 and on a range longer than `max_days` (issue 20: an
        unbounded range read, binned and sent centuries of hours)."""
        now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
        stop = _parse_time(end, end_of_day=True) if end else now
        try:
            begin = _parse_time(start) if start else stop - dt.timedelta(days=DEFAULT_DAYS)
        except OverflowError:
            raise ValueError(f"'to' leaves no {DEFAULT_DAYS} days before it: give 'from'") from None
        if begin >= stop:
            raise ValueError(
                f"'from' ({begin:%Y-%m-%d %H:%M}) must be before 'to' ({stop:%Y-%m-%d %H:%M})"
            )  # noqa: E501
        if stop - begin > dt.timedelta(days=max_days):
            raise ValueError(
                f"the range is {(stop - begin).days} days: at most {max_days} days "
                "(DASHBOARD_MAX_DAYS); narrow 'from'/'to'"
            )
        pid = _project(project)
        return cls(pid, begin, stop)


def _project(project: str | int | None) -> int | None:
    if project in (None, ""):
        return None
    text = str(project).strip()
    if not text.isdigit() or len(text) > 10 or not 0 < int(text) < 2**31:
        raise ValueError(f"'project' must be a Label Studio project id, not {text[:20]!r}")
    return int(text)


def _parse_time(text: str, end_of_day: bool = False) -> dt.datetime:
    """A UTC time; ValueError (never OverflowError) for anything outside 0001..9999."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        if end_of_day and len(text.strip()) == 10:  # a bare date: include that whole day
            value = min(value + dt.timedelta(days=1), dt.datetime.max)
    except OverflowError:  # 9999-12-31 plus its day, or a timezone past year 9999
        if end_of_day and text.strip().startswith("9999-12-31"):
            return dt.datetime.max
        raise ValueError(f"date out of range (years 1 to 9999): {text[:40]!r}") from None
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD) or ISO time: {text[:40]!r}") from None
    return value


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
        "start_iou_share": _ratio(iou_n, unchanged + changed),
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


def compute(engine: Engine, period: Period) -> dict[str, Any]:
    """Every figure and table of the dashboard for one period (JSON-able)."""
    with reading(engine) as conn:
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
