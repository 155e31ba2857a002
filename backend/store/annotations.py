"""Annotations in the label store: save (masks + one transaction), tombstone, read back.

The guarantees (idempotent, replace as a whole, tombstones, all-or-nothing) are listed in
the package doc. Saving also fills the start columns from the served regions (served.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from squeezesam.backend.store.db import Database, StoreError, remove_files, write_png_atomic
from squeezesam.backend.store.schema import (
    AnnotationRecord,
    StoredAnnotation,
    StoredObject,
    annotations,
    objects,
    utc_naive,
    utcnow,
)
from squeezesam.backend.store.served import Served, Start


class Annotations:
    """Accepted annotations and their object masks; `served` says what each started from."""

    def __init__(self, db: Database, served: Served) -> None:
        self.db = db
        self.served = served

    def save_annotation(self, record: AnnotationRecord) -> str:
        """Upsert one annotation. Returns created | updated | duplicate | deleted."""
        with self.db.tx("reading annotation") as conn:
            state = _state(conn, record)
        if state in ("duplicate", "deleted"):
            return state  # cheap path: no mask is written for a resend
        start = self.served.started_from(record)
        written = self._write_masks(record)
        try:
            for attempt in (1, 2):
                try:
                    result, old_paths = self._commit(record, written, start)
                    break
                except StoreError as exc:
                    # two writers raced to insert the same new id: re-read and decide again
                    if attempt == 2 or not isinstance(exc.__cause__, IntegrityError):
                        raise
        except BaseException:
            remove_files([p for _, p in written])
            raise
        if result in ("duplicate", "deleted"):
            remove_files([p for _, p in written])  # lost a race to an equal or newer write
        else:
            remove_files([self.db.data_dir / p for p in old_paths])  # replaced by the new version
        return result

    def _commit(
        self, record: AnnotationRecord, written: list[tuple[int, Path]], start: Start
    ) -> tuple[str, list[str]]:
        now = utcnow()
        row = _row(record, now) | {"served_deleted": start.deleted}
        if row["model_version"] is None:
            row["model_version"] = start.model_version
        try:
            with self.db.engine.begin() as conn:
                state = _state(conn, record, lock=True)
                if state in ("duplicate", "deleted"):
                    return state, []
                old_paths = [
                    r.mask_path
                    for r in conn.execute(
                        sa.select(objects.c.mask_path).where(
                            objects.c.annotation_id == record.annotation_id
                        )
                    )
                ]
                conn.execute(
                    objects.delete().where(objects.c.annotation_id == record.annotation_id)
                )
                if state == "created":
                    conn.execute(annotations.insert().values(**row))
                else:
                    conn.execute(
                        annotations.update()
                        .where(annotations.c.annotation_id == record.annotation_id)
                        .values(**row)
                    )
                rows = [
                    _object_row(record, number, path.relative_to(self.db.data_dir))
                    | start.objects.get(number, {})
                    for number, path in written
                ]
                if rows:
                    conn.execute(objects.insert(), rows)
                return state, old_paths
        except SQLAlchemyError as exc:
            err = StoreError(f"storing annotation {record.annotation_id} failed on "
                             f"{self.db.where}: {getattr(exc, 'orig', exc)}")  # fmt: skip
            raise err from exc

    def _write_masks(self, record: AnnotationRecord) -> list[tuple[int, Path]]:
        """PNG per object, atomically; returns (object number, absolute path)."""
        if record.was_cancelled:
            return []  # skipped tasks are not training data: no masks kept
        folder = self.db.masks_dir / f"p{record.project_id}" / f"a{record.annotation_id}"
        stamp = f"{record.updated_at:%Y%m%dT%H%M%S%f}_{uuid.uuid4().hex[:8]}"
        written: list[tuple[int, Path]] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create mask folder {folder}: {exc.strerror or exc}") from exc
        try:
            for number, obj in enumerate(record.objects, start=1):
                path = folder / f"{stamp}_{number}.png"
                write_png_atomic(path, np.where(obj.mask > 0, 255, 0).astype(np.uint8))
                written.append((number, path))
        except BaseException:
            remove_files([p for _, p in written])
            raise
        return written

    def mark_deleted(self, annotation_ids: Iterable[int], project_id: int | None = None) -> int:
        """Tombstone these annotations (inserting a bare tombstone for unknown ids).

        Returns how many were newly marked. Mask files are kept (never lose data); every
        reader skips deleted rows.
        """
        now, count = utcnow(), 0
        with self.db.tx("deleting annotations") as conn:
            for annotation_id in annotation_ids:
                where = annotations.c.annotation_id == int(annotation_id)
                found = conn.execute(sa.select(annotations.c.deleted).where(where)).first()
                if found is None:
                    conn.execute(
                        annotations.insert().values(
                            annotation_id=int(annotation_id), project_id=project_id,
                            deleted=True, deleted_at=now, stored_at=now, was_cancelled=False,
                        )
                    )  # fmt: skip
                    count += 1
                elif not found.deleted:
                    conn.execute(
                        annotations.update().where(where).values(deleted=True, deleted_at=now)
                    )
                    count += 1
        return count

    # --- reading ----------------------------------------------------------------------------

    def annotation_ids(self, project_id: int, include_deleted: bool = False) -> set[int]:
        query = sa.select(annotations.c.annotation_id).where(annotations.c.project_id == project_id)
        if not include_deleted:
            query = query.where(annotations.c.deleted.is_(False))
        with self.db.tx("listing annotations") as conn:
            return {r.annotation_id for r in conn.execute(query)}

    def get_annotation(self, annotation_id: int) -> dict[str, Any] | None:
        """The raw row (for inspection and tests), or None."""
        with self.db.tx("reading annotation") as conn:
            row = conn.execute(
                sa.select(annotations).where(annotations.c.annotation_id == annotation_id)
            ).first()
        return dict(row._mapping) if row else None

    def training_annotations(self, project_id: int | None = None) -> list[StoredAnnotation]:
        """Every kept annotation with its objects: not deleted, not cancelled.

        This is what fine-tuning and export read. Ordered by (project, task, annotation).
        """
        query = sa.select(annotations).where(
            annotations.c.deleted.is_(False), annotations.c.was_cancelled.is_(False)
        )
        if project_id is not None:
            query = query.where(annotations.c.project_id == project_id)
        query = query.order_by(annotations.c.project_id, annotations.c.task_id,
                               annotations.c.annotation_id)  # fmt: skip
        with self.db.tx("reading annotations") as conn:
            rows = list(conn.execute(query))
            by_annotation: dict[int, list[StoredObject]] = {r.annotation_id: [] for r in rows}
            if rows:
                obj_query = sa.select(objects).order_by(objects.c.annotation_id, objects.c.number)
                for o in conn.execute(obj_query):
                    if o.annotation_id in by_annotation:
                        by_annotation[o.annotation_id].append(
                            StoredObject(
                                o.number, o.label, o.width, o.height, o.area,
                                self.db.data_dir / o.mask_path, o.region_id, o.score, o.origin,
                            )
                        )  # fmt: skip
        return [
            StoredAnnotation(
                r.annotation_id, r.project_id, r.task_id, r.image_ref, r.annotator, r.lead_time,
                r.created_at, r.updated_at, r.parent_prediction, r.model_version,
                tuple(by_annotation[r.annotation_id]),
            )
            for r in rows
        ]  # fmt: skip

    def load_mask(self, obj: StoredObject) -> np.ndarray:
        """The object's mask, uint8 HxW with 0/255."""
        mask = cv2.imread(str(obj.mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise StoreError(f"mask file {obj.mask_path} is missing or unreadable")
        return mask


# --- rows ---------------------------------------------------------------------------------


def _state(conn: Connection, record: AnnotationRecord, lock: bool = False) -> str:
    query = sa.select(annotations.c.deleted, annotations.c.updated_at).where(
        annotations.c.annotation_id == record.annotation_id
    )
    if lock:
        query = query.with_for_update()  # PostgreSQL row lock; SQLite holds the DB lock
    row = conn.execute(query).first()
    if row is None:
        return "created"
    if row.deleted:
        return "deleted"
    incoming = utc_naive(record.updated_at)
    if row.updated_at is not None and incoming is not None and row.updated_at >= incoming:
        return "duplicate"  # same version again, or an older one arriving late
    return "updated"


def _row(record: AnnotationRecord, now: Any) -> dict[str, Any]:
    return {
        "annotation_id": record.annotation_id, "project_id": record.project_id,
        "task_id": record.task_id, "image_ref": record.image_ref,
        "annotator": record.annotator, "lead_time": record.lead_time,
        "created_at": utc_naive(record.created_at), "updated_at": utc_naive(record.updated_at),
        "was_cancelled": record.was_cancelled, "deleted": False, "deleted_at": None,
        "parent_prediction": record.parent_prediction, "model_version": record.model_version,
        "prediction_json": json.dumps(record.prediction) if record.prediction else None,
        "result_json": json.dumps(record.result), "stored_at": now,
    }  # fmt: skip


def _object_row(record: AnnotationRecord, number: int, rel_path: Path) -> dict[str, Any]:
    obj = record.objects[number - 1]
    height, width = obj.mask.shape[:2]
    return {
        "annotation_id": record.annotation_id, "number": number, "region_id": obj.region_id,
        "from_name": obj.from_name, "label": obj.label, "width": width, "height": height,
        "area": int(np.count_nonzero(obj.mask)), "mask_path": rel_path.as_posix(),
        "score": obj.score, "origin": obj.origin, "start_iou": None,
        "start_model_version": None, "start_kind": None, "start_label": None,
    }  # fmt: skip
