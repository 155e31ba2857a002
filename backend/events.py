"""Records of what the backend's jobs do, for the dashboard and `/metrics`.

Two contracts, both owned here so that writers (the pre-annotation and training jobs) and
readers (dashboard, metrics) agree on one definition:

1. Pre-annotation progress lives in Redis, one hash per project while a run is going:

       squeezesam:preannotate:<project>   (PREANNOTATE_KEY_PREFIX + project id)
         total       tasks in the run (int)
         done        tasks answered so far, failures included (int, HINCRBY)
         failed      tasks that ended in an error (int, HINCRBY)
         started_at  unix seconds (float) when the run started
         updated_at  unix seconds (float) of the last change
         finished_at unix seconds when the run ended (absent while running)
         model_version  the version doing the run (optional)

   Redis rather than SQL: it changes on every task from several worker processes, and
   it is transient (the hash expires PREANNOTATE_TTL seconds after its last change).
   Writers use `progress_start` / `progress_advance` / `progress_finish`.

2. Fine-tuning runs live in the label store's database, table `training_runs` (created
   here with SQLAlchemy Core if absent, so it works before the store defines it). One
   row per run: written by `record_training_run`, read by `training_runs`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine

# --- pre-annotation progress (Redis) ---------------------------------------------------

PREANNOTATE_KEY_PREFIX = "squeezesam:preannotate:"
PREANNOTATE_TTL = 24 * 3600  # a finished or abandoned run disappears after a day
F_TOTAL, F_DONE, F_FAILED = "total", "done", "failed"
F_STARTED, F_UPDATED, F_FINISHED, F_VERSION = (
    "started_at",
    "updated_at",
    "finished_at",
    "model_version",
)
STALE_AFTER = 600.0  # a run with no change for 10 minutes is shown as stalled


def progress_key(project_id: int | str) -> str:
    return f"{PREANNOTATE_KEY_PREFIX}{project_id}"


def progress_start(
    conn: redis.Redis, project_id: int, total: int, model_version: str | None = None
) -> None:
    """A new run: resets the counters (a second run replaces the first's hash)."""
    now = time.time()
    fields: dict[str, Any] = {F_TOTAL: int(total), F_DONE: 0, F_FAILED: 0, F_STARTED: now,
                              F_UPDATED: now}  # fmt: skip
    if model_version:
        fields[F_VERSION] = model_version
    key = progress_key(project_id)
    with conn.pipeline() as pipe:
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, PREANNOTATE_TTL)
        pipe.execute()


def progress_advance(conn: redis.Redis, project_id: int, done: int = 1, failed: int = 0) -> None:
    """Count answered tasks (`done` includes the `failed` ones); atomic across workers."""
    key = progress_key(project_id)
    with conn.pipeline() as pipe:
        pipe.hincrby(key, F_DONE, done)
        if failed:
            pipe.hincrby(key, F_FAILED, failed)
        pipe.hset(key, F_UPDATED, time.time())
        pipe.expire(key, PREANNOTATE_TTL)
        pipe.execute()


def progress_finish(conn: redis.Redis, project_id: int) -> None:
    now = time.time()
    conn.hset(progress_key(project_id), mapping={F_FINISHED: now, F_UPDATED: now})


@dataclass(frozen=True)
class Progress:
    project_id: str
    total: int
    done: int
    failed: int
    started_at: float | None
    updated_at: float | None
    finished_at: float | None
    model_version: str | None

    @property
    def state(self) -> str:
        if self.finished_at is not None or (self.total and self.done >= self.total):
            return "finished"
        if self.updated_at is not None and time.time() - self.updated_at > STALE_AFTER:
            return "stalled"
        return "running"

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def as_row(self) -> dict[str, Any]:
        def iso(t: float | None) -> str:
            return (
                ""
                if t is None
                else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            )  # noqa: E501

        return {"project": self.project_id, "state": self.state, "total": self.total,
                "done": self.done, "failed": self.failed, "percent": round(100 * self.fraction, 1),
                "started_at": iso(self.started_at), "updated_at": iso(self.updated_at),
                "model_version": self.model_version or ""}  # fmt: skip


def read_progress(conn: redis.Redis, project_id: int | str | None = None) -> list[Progress]:
    """Runs in Redis, for one project or all (SCAN, never KEYS: safe on a busy Redis)."""
    keys = (
        [progress_key(project_id)]
        if project_id is not None
        else sorted(conn.scan_iter(match=PREANNOTATE_KEY_PREFIX + "*", count=500))
    )
    out = []
    for key in keys:
        raw = conn.hgetall(key)
        if not raw:
            continue
        h = {_text(k): _text(v) for k, v in raw.items()}
        name = _text(key)[len(PREANNOTATE_KEY_PREFIX) :]
        out.append(Progress(name, _int(h.get(F_TOTAL)), _int(h.get(F_DONE)),
                            _int(h.get(F_FAILED)), _float(h.get(F_STARTED)),
                            _float(h.get(F_UPDATED)), _float(h.get(F_FINISHED)),
                            h.get(F_VERSION) or None))  # fmt: skip
    return out


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _int(v: str | None) -> int:
    try:
        return int(float(v)) if v is not None else 0
    except ValueError:
        return 0


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


# --- fine-tuning runs (SQL) -------------------------------------------------------------

# A separate MetaData: creating this table never touches the store's own tables.
training_metadata = sa.MetaData()
training_runs_table = sa.Table(
    "training_runs",
    training_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.BigInteger, nullable=True),  # None: trained on all projects
    sa.Column("started_at", sa.DateTime, nullable=False),  # naive UTC, like the store
    sa.Column("finished_at", sa.DateTime, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),  # running | finished | failed
    sa.Column("data_size", sa.Integer, nullable=True),  # annotations trained on
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("candidate_version", sa.Text, nullable=True),
    sa.Column("current_version", sa.Text, nullable=True),  # active when the run started
    sa.Column("metrics_json", sa.Text, nullable=True),  # {"candidate": {...}, "current": {...}}
    sa.Column("decision", sa.String(32), nullable=True),  # promoted | rejected | none
    sa.Column("reason", sa.Text, nullable=True),
)
sa.Index("ix_training_runs_project", training_runs_table.c.project,
         training_runs_table.c.started_at)  # fmt: skip

_ensured: set[int] = set()


def ensure_training_runs(engine: Engine) -> None:
    """Create `training_runs` once per engine (no-op if the store already created it)."""
    if id(engine) not in _ensured:
        training_metadata.create_all(engine, checkfirst=True)
        _ensured.add(id(engine))


def record_training_run(engine: Engine, **values: Any) -> int:
    """Insert one run (column names as keyword arguments; `metrics` may be a dict).

    Returns its id; update it later with `update_training_run(engine, id, ...)`.
    """
    ensure_training_runs(engine)
    values = _prepare(values)
    with engine.begin() as conn:
        return int(
            conn.execute(training_runs_table.insert().values(**values)).inserted_primary_key[0]
        )  # noqa: E501


def update_training_run(engine: Engine, run_id: int, **values: Any) -> None:
    ensure_training_runs(engine)
    with engine.begin() as conn:
        conn.execute(
            training_runs_table.update()
            .where(training_runs_table.c.id == run_id)
            .values(**_prepare(values))
        )


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
    The caller ensures the table (`ensure_training_runs`) before opening `conn`.
    """
    t = training_runs_table.c
    query = sa.select(training_runs_table).order_by(t.started_at.desc(), t.id.desc())
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
