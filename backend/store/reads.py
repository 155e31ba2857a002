"""The label store's read path: what the dashboard, `/metrics`, `labels stats` and the
training scheduler ask of it.

Every read opens its connection with `reading(engine)`, which goes through
`db.read_engine`: on SQLite a plain engine beside the store's writer (no write lock, so a
dashboard read never makes a webhook wait). The dashboard's per-annotation scan is
label_rows.py; the fine-tuning runs are runs.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from squeezesam.backend.store.db import read_engine
from squeezesam.backend.store.schema import annotations, clicks, objects, training_runs


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads (see the module doc)."""
    with read_engine(engine).connect() as conn:
        yield conn


def empty_counts() -> dict[str, Any]:
    return {"annotations": {"kept": 0, "deleted": 0, "cancelled": 0}, "objects": {}, "clicks": 0}


def label_counts(conn: Connection) -> dict[str, dict[str, Any]]:
    """Per project (as a string): kept/deleted/cancelled annotations, objects of kept
    annotations per label, recorded clicks. A project only present in one table gets
    zeros for the others."""
    out: dict[str, dict[str, Any]] = {}
    a, o = annotations.c, objects.c
    for r in conn.execute(
        sa.select(a.project_id, a.deleted, a.was_cancelled, sa.func.count()).group_by(
            a.project_id, a.deleted, a.was_cancelled
        )
    ):
        p = out.setdefault(str(r.project_id), empty_counts())
        key = "deleted" if r.deleted else "cancelled" if r.was_cancelled else "kept"
        p["annotations"][key] += r[3]
    for r in conn.execute(
        sa.select(a.project_id, o.label, sa.func.count())
        .select_from(objects.join(annotations))
        .where(a.deleted.is_(False), a.was_cancelled.is_(False))
        .group_by(a.project_id, o.label)
    ):
        out.setdefault(str(r.project_id), empty_counts())["objects"][r.label] = r[2]
    for r in conn.execute(
        sa.select(clicks.c.project_id, sa.func.count()).group_by(clicks.c.project_id)
    ):
        out.setdefault(str(r.project_id), empty_counts())["clicks"] = r[1]
    return out


def training_run_counts(conn: Connection) -> list[tuple[int | None, str, str, int]]:
    """(project, status, decision, runs) per group; project None: runs over all projects."""
    t = training_runs.c
    query = sa.select(t.project, t.status, t.decision, sa.func.count()).group_by(
        t.project, t.status, t.decision
    )
    return [(p, status or "", decision or "", n) for p, status, decision, n in conn.execute(query)]


def last_run_starts(conn: Connection) -> list[tuple[int | None, dt.datetime]]:
    """(project, when its latest run started), naive UTC."""
    t = training_runs.c
    query = sa.select(t.project, sa.func.max(t.started_at)).group_by(t.project)
    return [(p, started) for p, started in conn.execute(query) if started is not None]


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


def project_ids(conn: Connection) -> list[int]:
    """Every project the store has an annotation of (tombstones included), ascending."""
    query = (
        sa.select(annotations.c.project_id).distinct().where(annotations.c.project_id.is_not(None))
    )
    return sorted(int(r[0]) for r in conn.execute(query))


def new_labels_since_last_run(conn: Connection, project_id: int) -> int:
    """Kept annotations of the project stored after its last run started (all runs if none)."""
    a, t = annotations.c, training_runs.c
    last = conn.execute(
        sa.select(sa.func.max(t.started_at)).where(
            sa.or_(t.project == project_id, t.project.is_(None))
        )
    ).scalar()
    query = sa.select(sa.func.count()).where(
        a.project_id == project_id, a.deleted.is_(False), a.was_cancelled.is_(False)
    )
    if last is not None:
        query = query.where(a.stored_at > last)
    return int(conn.execute(query).scalar() or 0)
