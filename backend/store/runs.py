"""Fine-tuning runs in the label store's database (table `training_runs`, schema.py).

One row per run: written by the training job (training_job.py) from start to finish
(`record_training_run`, `update_training_run`), closed by the next run when its worker
died (`close_interrupted_runs`), read by the dashboard and `/metrics` (`training_runs`,
reads.py). Times are naive UTC, like every time in the store.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from squeezesam.backend.store.schema import training_runs as runs_table
from squeezesam.backend.store.schema import utcnow


def record_training_run(engine: Engine, **values: Any) -> int:
    """Insert one run (column names as keyword arguments; `metrics` may be a dict).

    Returns its id; update it later with `update_training_run(engine, id, ...)`.
    """
    with engine.begin() as conn:
        inserted = conn.execute(runs_table.insert().values(**_prepare(values)))
        return int(inserted.inserted_primary_key[0])


def update_training_run(engine: Engine, run_id: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(
            runs_table.update().where(runs_table.c.id == run_id).values(**_prepare(values))
        )


def close_interrupted_runs(engine: Engine) -> None:
    """Rows still "running" belong to a worker that died (the caller holds the lock)."""
    t = runs_table
    with engine.begin() as conn:
        conn.execute(
            t.update()
            .where(t.c.status == "running")
            .values(status="failed", finished_at=utcnow(), decision="none",
                    reason="interrupted: the train worker stopped during the run")
        )  # fmt: skip


def _prepare(values: dict[str, Any]) -> dict[str, Any]:
    values = dict(values)
    if "metrics" in values:
        values["metrics_json"] = json.dumps(values.pop("metrics"))
    for name in ("started_at", "finished_at"):
        t = values.get(name)
        if isinstance(t, dt.datetime) and t.tzinfo is not None:
            values[name] = t.astimezone(dt.UTC).replace(tzinfo=None)
    values.setdefault("status", "finished" if values.get("finished_at") else "running")
    return values


def training_runs(
    conn: sa.Connection,
    project_id: int | None = None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Runs newest first, for a project (runs over all projects included) and period.

    Each row as stored, plus `metrics` (parsed metrics_json, {} when absent or invalid).
    """
    t = runs_table.c
    query = sa.select(runs_table).order_by(t.started_at.desc(), t.id.desc())
    if project_id is not None:
        query = query.where(sa.or_(t.project == project_id, t.project.is_(None)))
    if start is not None:
        query = query.where(t.started_at >= start)
    if end is not None:
        query = query.where(t.started_at < end)
    out = []
    for row in conn.execute(query):
        item = dict(row._mapping)
        try:
            item["metrics"] = json.loads(item["metrics_json"] or "{}")
        except ValueError:
            item["metrics"] = {}
        out.append(item)
    return out
