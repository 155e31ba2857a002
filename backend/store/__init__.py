"""The label store: every accepted Label Studio annotation, its object masks, the clicks,
the regions served and the fine-tuning runs.

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

The package, one module a concept (SQL is written here and nowhere else in the backend):
- schema.py: every table (training_runs included) and the record types;
- db.py: the engine, one transaction (`Database.tx`), atomic mask files, the read engine;
- served.py: clicks and served regions, and what an annotation started from;
- annotations.py: saving, tombstoning and reading annotations and their masks;
- reads.py: the read path of the dashboard, `/metrics`, `labels stats` and the training
  scheduler; label_rows.py: the dashboard's one scan; runs.py: the fine-tuning runs;
- cli.py: `squeezesam labels ...`.

`Store` puts the parts together by composition, over one `store.db`: the annotations'
operations are the store's own (`store.save_annotation`, `store.training_annotations`,
... delegating to `store.annotations`); the interactive trail is `store.served`
(`store.served.record_clicks`, `store.served.record_served_item`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from squeezesam.backend.settings import Settings
from squeezesam.backend.store.annotations import Annotations
from squeezesam.backend.store.db import (
    DB_FILE,
    MASKS_DIR,
    Database,
    StoreError,
    data_dir_from,
    database_url_from,
    engine_url,
)
from squeezesam.backend.store.reads import label_counts
from squeezesam.backend.store.schema import (
    AnnotationRecord,
    ClickRecord,
    ServedRegion,
    StoredAnnotation,
    StoredObject,
    annotations,
    served_regions,
)
from squeezesam.backend.store.served import SERVED_RETENTION_DAYS, Served

__all__ = [
    "DB_FILE",
    "MASKS_DIR",
    "SERVED_RETENTION_DAYS",
    "AnnotationRecord",
    "ClickRecord",
    "ServedRegion",
    "Store",
    "StoreError",
    "StoredAnnotation",
    "StoredObject",
    "data_dir_from",
    "database_url_from",
    "engine_url",
]


class Store:
    """Open with `Store.open(settings)` or `Store(data_dir, database_url)`."""

    def __init__(self, data_dir: str | Path, database_url: str = "") -> None:
        self.db = Database(data_dir, database_url)
        self.served = Served(self.db)
        self.annotations = Annotations(self.db, self.served)

    @classmethod
    def open(cls, settings: Settings | None = None) -> Store:
        return cls(data_dir_from(settings), database_url_from(settings))

    # where it lives (tests and the CLI read these)
    data_dir = property(lambda self: self.db.data_dir)
    masks_dir = property(lambda self: self.db.masks_dir)
    engine = property(lambda self: self.db.engine)
    where = property(lambda self: self.db.where)

    def close(self) -> None:
        self.db.close()

    def warm_up(self) -> None:
        """Connect and run the webhook's read path once (pool, dialect, statement cache),
        so the first webhook after a start does not pay for it."""
        with self.db.tx("warming up") as conn:
            conn.execute(sa.select(annotations.c.deleted, annotations.c.updated_at).where(
                annotations.c.annotation_id == -1))  # fmt: skip
            conn.execute(sa.select(served_regions).where(served_regions.c.task_id == -1))

    # --- annotations (annotations.py) ---------------------------------------------------

    def save_annotation(self, record: AnnotationRecord) -> str:
        return self.annotations.save_annotation(record)

    def mark_deleted(self, annotation_ids: Iterable[int], project_id: int | None = None) -> int:
        return self.annotations.mark_deleted(annotation_ids, project_id)

    def annotation_ids(self, project_id: int, include_deleted: bool = False) -> set[int]:
        return self.annotations.annotation_ids(project_id, include_deleted)

    def get_annotation(self, annotation_id: int) -> dict[str, Any] | None:
        return self.annotations.get_annotation(annotation_id)

    def training_annotations(self, project_id: int | None = None) -> list[StoredAnnotation]:
        return self.annotations.training_annotations(project_id)

    def load_mask(self, obj: StoredObject) -> np.ndarray:
        return self.annotations.load_mask(obj)

    # --- counts (reads.py) ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts per project: kept/deleted/cancelled annotations, objects per label, clicks."""
        with self.db.tx("reading stats") as conn:
            projects = label_counts(conn)
        return {"database": self.where, "data_dir": str(self.data_dir), "projects": projects}
