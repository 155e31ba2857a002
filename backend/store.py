"""The label store: every accepted Label Studio annotation, its object masks and the clicks.

Rows live in SQLite (`<data dir>/labels.db`, WAL) by default, or in PostgreSQL when
DATABASE_URL is set; the same SQLAlchemy Core code runs on both. Masks are PNG files
under `<data dir>/masks/` (one per object, 0/255, at the image's original size), named
per write so a failed or raced write never overwrites a file another row points to.

Guarantees:
- idempotent: an annotation is stored once per (annotation id, updated_at); the same
  webhook twice, or a webhook and a reconcile, store it once;
- ANNOTATION_UPDATED replaces the objects of the annotation as a whole;
- a deletion leaves a tombstone, so nothing resurrects a deleted annotation;
- all-or-nothing: masks are written (temp file + fsync + rename) before the one DB
  transaction; if anything fails, the new files are removed and the old rows stay.
  Failures surface as StoreError naming the path (read-only or full disk, DB errors).

`Store` is put together from its parts, each a module of its own:
- store_core.py: opening (data folder, engine, schema, added columns), one transaction;
- store_served.py: clicks and served regions, and what an annotation started from;
- store_annotations.py: saving, tombstoning and reading annotations and their masks;
- store_schema.py (tables, record types) and store_io.py (engine, atomic files).
Import the store's names from here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from squeezesam.backend.settings import Settings
from squeezesam.backend.store_annotations import AnnotationStore
from squeezesam.backend.store_core import (
    DB_FILE,
    MASKS_DIR,
    _engine_url,
    data_dir_from,
    database_url_from,
)
from squeezesam.backend.store_io import StoreError
from squeezesam.backend.store_schema import (
    AnnotationRecord,
    Click,
    ServedRegion,
    StoredAnnotation,
    StoredObject,
    annotations,
    clicks,
    objects,
    served_regions,
)
from squeezesam.backend.store_served import SERVED_RETENTION_DAYS

__all__ = [
    "DB_FILE",
    "MASKS_DIR",
    "SERVED_RETENTION_DAYS",
    "AnnotationRecord",
    "Click",
    "ServedRegion",
    "Store",
    "StoreError",
    "StoredAnnotation",
    "StoredObject",
    "_engine_url",  # tests/backend/conftest.py opens raw engines with it
    "data_dir_from",
    "database_url_from",
]


class Store(AnnotationStore):
    """Open with `Store.open(settings)` or `Store(data_dir, database_url)`."""

    @classmethod
    def open(cls, settings: Settings | None = None) -> Store:
        return cls(data_dir_from(settings), database_url_from(settings))

    def warm_up(self) -> None:
        """Connect and run the webhook's read path once (pool, dialect, statement cache),
        so the first webhook after a start does not pay for it."""
        with self._tx("warming up") as conn:
            conn.execute(sa.select(annotations.c.deleted, annotations.c.updated_at).where(
                annotations.c.annotation_id == -1))  # fmt: skip
            conn.execute(sa.select(served_regions).where(served_regions.c.task_id == -1))

    # --- stats --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per project: kept/deleted/cancelled annotations, objects per label, clicks."""
        out: dict[str, Any] = {"database": self.where, "data_dir": str(self.data_dir),
                               "projects": {}}  # fmt: skip
        a, o = annotations.c, objects.c
        with self._tx("reading stats") as conn:
            for r in conn.execute(
                sa.select(a.project_id, a.deleted, a.was_cancelled, sa.func.count()).group_by(
                    a.project_id, a.deleted, a.was_cancelled
                )
            ):
                p = out["projects"].setdefault(str(r.project_id), _empty_stats())
                key = "deleted" if r.deleted else "cancelled" if r.was_cancelled else "kept"
                p["annotations"][key] += r[3]
            for r in conn.execute(
                sa.select(a.project_id, o.label, sa.func.count())
                .select_from(objects.join(annotations))
                .where(a.deleted.is_(False), a.was_cancelled.is_(False))
                .group_by(a.project_id, o.label)
            ):
                out["projects"].setdefault(str(r.project_id), _empty_stats())["objects"][
                    r.label
                ] = r[2]
            for r in conn.execute(
                sa.select(clicks.c.project_id, sa.func.count()).group_by(clicks.c.project_id)
            ):
                out["projects"].setdefault(str(r.project_id), _empty_stats())["clicks"] = r[1]
        return out


def _empty_stats() -> dict[str, Any]:
    return {"annotations": {"kept": 0, "deleted": 0, "cancelled": 0}, "objects": {}, "clicks": 0}
