"""Pre-annotation progress: how far each project's run is, for the dashboard, `/metrics`,
`GET /preannotate/<project>` and the CLI's progress bar.

The contract, owned here so that writers (the pre-annotation jobs) and readers agree on
one definition: one Redis hash per project while a run is going:

       squeezesam:preannotate:<project>   (PREANNOTATE_KEY_PREFIX + project id)
         total       tasks in the run (int)
         done        tasks answered so far, failures included (int, HINCRBY)
         failed      tasks that ended in an error (int, HINCRBY)
         started_at  unix seconds (float) when the run started
         updated_at  unix seconds (float) of the last change
         finished_at unix seconds when the run ended (absent while running)
         model_version  the version doing the run (optional)

Redis rather than SQL: it changes on every task from several worker processes, and it
is transient (the hash expires PREANNOTATE_TTL seconds after its last change). Writers
use `progress_start` / `progress_advance` / `progress_finish`. (Fine-tuning runs, which
last, are rows in the label store: store/runs.py.)
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import redis

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
