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
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from squeezesam.backend.masks import decode_brush_rle
from squeezesam.backend.settings import Settings
from squeezesam.backend.store_io import (
    StoreError,
    insert_ignore,
    make_engine,
    redact_url,
    remove_files,
    write_png_atomic,
)
from squeezesam.backend.store_schema import (
    ADDED_COLUMNS,
    AnnotationRecord,
    Click,
    ServedRegion,
    StoredAnnotation,
    StoredObject,
    annotations,
    clicks,
    metadata,
    objects,
    served_regions,
    utc_naive,
    utcnow,
)
from squeezesam.models.clicks import iou

log = logging.getLogger(__name__)

DB_FILE = "labels.db"
MASKS_DIR = "masks"
SERVED_RETENTION_DAYS = 60  # served regions older than this are dropped (store size)


# --- settings -----------------------------------------------------------------------------


def data_dir_from(settings: Settings | None = None) -> Path:
    """SQUEEZESAM_DATA_DIR (`Settings.data_dir`), `~` expanded."""
    return (settings or Settings.from_env()).data_path


def database_url_from(settings: Settings | None = None) -> str:
    return (settings or Settings.from_env()).database_url


def _engine_url(database_url: str, data_dir: Path) -> str:
    if not database_url:
        return f"sqlite:///{data_dir / DB_FILE}"
    # psycopg 3 is the installed driver; SQLAlchemy's bare `postgresql://` means psycopg2
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class Store:
    """Open with `Store.open(settings)` or `Store(data_dir, database_url)`."""

    def __init__(self, data_dir: str | os.PathLike[str], database_url: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.masks_dir = self.data_dir / MASKS_DIR
        url = _engine_url(database_url, self.data_dir)
        self.is_sqlite = url.startswith("sqlite")
        # where errors point: the DB file, or the server URL without its password
        self.where = str(self.data_dir / DB_FILE) if self.is_sqlite else redact_url(url)
        try:
            self.masks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = f"cannot create the label store directory {self.masks_dir}: {exc}"
            raise StoreError(msg) from exc
        self.engine = make_engine(url)
        try:
            metadata.create_all(self.engine)
            _add_missing_columns(self.engine)
        except SQLAlchemyError as exc:
            msg = f"cannot open the label database {self.where}: {getattr(exc, 'orig', exc)}"
            raise StoreError(msg) from exc

    @classmethod
    def open(cls, settings: Settings | None = None) -> Store:
        return cls(data_dir_from(settings), database_url_from(settings))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self, what: str) -> Iterator[Connection]:
        """One transaction; any DB failure becomes a StoreError naming the database."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            msg = f"{what} failed on {self.where}: {getattr(exc, 'orig', exc)}"
            raise StoreError(msg) from exc

    # --- annotations ---------------------------------------------------------------------

    def save_annotation(self, record: AnnotationRecord) -> str:
        """Upsert one annotation. Returns created | updated | duplicate | deleted."""
        with self._tx("reading annotation") as conn:
            state = _state(conn, record)
        if state in ("duplicate", "deleted"):
            return state  # cheap path: no mask is written for a resend
        start = self._started_from(record)
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
            remove_files([self.data_dir / p for p in old_paths])  # replaced by the new version
        return result

    def _commit(
        self, record: AnnotationRecord, written: list[tuple[int, Path]], start: _Start
    ) -> tuple[str, list[str]]:
        now = utcnow()
        row = _row(record, now) | {"served_deleted": start.deleted}
        if row["model_version"] is None:
            row["model_version"] = start.model_version
        try:
            with self.engine.begin() as conn:
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
                    _object_row(record, number, path.relative_to(self.data_dir))
                    | start.objects.get(number, {})
                    for number, path in written
                ]
                if rows:
                    conn.execute(objects.insert(), rows)
                return state, old_paths
        except SQLAlchemyError as exc:
            err = StoreError(f"storing annotation {record.annotation_id} failed on {self.where}: "
                             f"{getattr(exc, 'orig', exc)}")  # fmt: skip
            raise err from exc

    def _started_from(self, record: AnnotationRecord) -> _Start:
        """What the annotator started from, from the regions we served for the task.

        An object whose region id is a served region's id came from it (Label Studio
        keeps a region's id when the annotator accepts a prediction): its start IoU,
        model version, kind and label. The served pre-annotation batch the annotation
        started from (the one its objects came from, else, when it has a parent
        prediction, the latest one) gives `served_deleted`: its regions no longer in the
        annotation. Never fails the save: a problem here is logged and leaves NULLs.
        """
        start = _Start()
        if record.was_cancelled:
            return start
        try:
            with self._tx("reading served regions") as conn:
                served = {r.region_id: r for r in conn.execute(
                    sa.select(served_regions).where(served_regions.c.task_id == record.task_id)
                )}  # fmt: skip
            if not served:
                return start
            final_ids = {o.region_id for o in record.objects if o.region_id}
            versions: Counter[str] = Counter()
            batches: list[tuple[Any, Any]] = []
            for number, obj in enumerate(record.objects, start=1):
                region = served.get(obj.region_id or "")
                if region is None:
                    continue
                start.objects[number] = {
                    "start_iou": _iou(region, obj.mask), "start_kind": region.kind,
                    "start_model_version": region.model_version, "start_label": region.label,
                }  # fmt: skip
                if region.model_version:
                    versions[region.model_version] += 1 + (region.kind == "preannotation")
                if region.kind == "preannotation":
                    batches.append((region.model_version, region.served_at))
            pre = [r for r in served.values() if r.kind == "preannotation"]
            if not batches and pre and record.parent_prediction is not None:
                latest = max(pre, key=lambda r: r.served_at)
                batches.append((latest.model_version, latest.served_at))
                if latest.model_version:
                    versions[latest.model_version] += 1
            if batches:
                batch = Counter(batches).most_common(1)[0][0]
                start.deleted = sum(
                    1 for r in pre
                    if (r.model_version, r.served_at) == batch and r.region_id not in final_ids
                )  # fmt: skip
            if versions:
                start.model_version = versions.most_common(1)[0][0]
        except Exception as exc:  # the label itself matters more than this figure
            log.warning("annotation %s: start IoU not computed: %s: %s",
                        record.annotation_id, type(exc).__name__, exc)  # fmt: skip
            return _Start()
        return start

    def _write_masks(self, record: AnnotationRecord) -> list[tuple[int, Path]]:
        """PNG per object, atomically; returns (object number, absolute path)."""
        if record.was_cancelled:
            return []  # skipped tasks are not training data: no masks kept
        folder = self.masks_dir / f"p{record.project_id}" / f"a{record.annotation_id}"
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
        with self._tx("deleting annotations") as conn:
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

    def annotation_ids(self, project_id: int, include_deleted: bool = False) -> set[int]:
        query = sa.select(annotations.c.annotation_id).where(annotations.c.project_id == project_id)
        if not include_deleted:
            query = query.where(annotations.c.deleted.is_(False))
        with self._tx("listing annotations") as conn:
            return {r.annotation_id for r in conn.execute(query)}

    def get_annotation(self, annotation_id: int) -> dict[str, Any] | None:
        """The raw row (for inspection and tests), or None."""
        with self._tx("reading annotation") as conn:
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
        with self._tx("reading annotations") as conn:
            rows = list(conn.execute(query))
            by_annotation: dict[int, list[StoredObject]] = {r.annotation_id: [] for r in rows}
            if rows:
                obj_query = sa.select(objects).order_by(objects.c.annotation_id, objects.c.number)
                for o in conn.execute(obj_query):
                    if o.annotation_id in by_annotation:
                        by_annotation[o.annotation_id].append(
                            StoredObject(
                                o.number, o.label, o.width, o.height, o.area,
                                self.data_dir / o.mask_path, o.region_id, o.score, o.origin,
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

    # --- clicks -----------------------------------------------------------------------------

    def record_clicks(
        self,
        project_id: int,
        task_id: int,
        points: Iterable[Click],
        model_version: str | None = None,
    ) -> int:
        """Store the clicks of one interactive request; returns how many were new.

        Label Studio resends all keypoints of the current region with every click, so a
        click with a region id already stored for this task is skipped.
        """
        now = utcnow()
        rows = [
            {
                "project_id": int(project_id), "task_id": int(task_id),
                "region_id": c.region_id, "x": float(c.x), "y": float(c.y),
                "is_positive": bool(c.is_positive), "label": c.label,
                "image_width": c.image_width, "image_height": c.image_height,
                "model_version": model_version, "created_at": now,
            }
            for c in points
        ]  # fmt: skip
        if not rows:
            return 0
        with self._tx("recording clicks") as conn:
            return self._insert_new(conn, clicks, ["task_id", "region_id"], rows)

    def clicks_for_task(self, task_id: int) -> list[dict[str, Any]]:
        query = sa.select(clicks).where(clicks.c.task_id == task_id).order_by(clicks.c.id)
        with self._tx("reading clicks") as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def _insert_new(
        self, conn: Connection, table: sa.Table, keys: list[str], rows: list[dict[str, Any]]
    ) -> int:
        """Insert rows, skipping those whose `keys` exist already; how many were new.
        Counted from RETURNING rows: rowcount is -1 for this statement on psycopg."""
        insert = insert_ignore(self.engine, table, keys).returning(table.c[keys[0]])
        return sum(len(conn.execute(insert.values(**row)).all()) for row in rows)

    # --- served regions ---------------------------------------------------------------------

    def record_served(self, task_id: int, regions: Iterable[ServedRegion]) -> int:
        """Remember the brush regions served for a task; returns how many were new.

        One call is one batch (one served_at). A region served again (a cached answer,
        same ids) keeps its first row. Rows older than SERVED_RETENTION_DAYS are dropped.
        """
        now = utcnow()
        rows = [
            {"task_id": int(task_id), "region_id": r.region_id, "kind": r.kind,
             "model_version": r.model_version, "label": r.label, "width": int(r.width),
             "height": int(r.height), "rle": json.dumps(list(r.rle), separators=(",", ":")),
             "served_at": now}
            for r in regions
        ]  # fmt: skip
        if not rows:
            return 0
        with self._tx("recording served regions") as conn:
            new = self._insert_new(conn, served_regions, ["task_id", "region_id"], rows)
            cutoff = now - dt.timedelta(days=SERVED_RETENTION_DAYS)
            conn.execute(served_regions.delete().where(served_regions.c.served_at < cutoff))
        return new

    def served_for_task(self, task_id: int) -> list[dict[str, Any]]:
        query = (sa.select(served_regions).where(served_regions.c.task_id == task_id)
                 .order_by(served_regions.c.served_at, served_regions.c.region_id))  # fmt: skip
        with self._tx("reading served regions") as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

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


# --- helpers ------------------------------------------------------------------------------


class _Start:
    """Per-object start columns (by object number), served_deleted, model version."""

    def __init__(self) -> None:
        self.objects: dict[int, dict[str, Any]] = {}
        self.deleted: int | None = None
        self.model_version: str | None = None


def _iou(region: Any, mask: np.ndarray) -> float:
    served = decode_brush_rle(json.loads(region.rle), region.width, region.height) > 0
    final = mask > 0
    if served.shape != final.shape:  # another pixel grid: compare on the final one
        resized = cv2.resize(served.astype(np.uint8), final.shape[::-1],
                             interpolation=cv2.INTER_NEAREST)  # fmt: skip
        served = resized > 0
    return float(iou(served, final))


def _add_missing_columns(engine: sa.Engine) -> None:
    """ALTER TABLE ... ADD COLUMN for ADDED_COLUMNS a database made before them lacks.

    Idempotent; all added columns are nullable. Two processes opening an old database at
    once may both try: the loser's "duplicate column" error is ignored after a re-check."""
    inspector = sa.inspect(engine)
    for table, name in ADDED_COLUMNS:
        if name in {c["name"] for c in inspector.get_columns(table.name)}:
            continue
        column = table.c[name]
        ddl = (f"ALTER TABLE {table.name} ADD COLUMN {name} "
               f"{column.type.compile(dialect=engine.dialect)}")  # fmt: skip
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(ddl)
        except SQLAlchemyError:
            if name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                raise
        log.info("label store: added column %s.%s", table.name, name)
        inspector = sa.inspect(engine)


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


def _empty_stats() -> dict[str, Any]:
    return {"annotations": {"kept": 0, "deleted": 0, "cancelled": 0}, "objects": {}, "clicks": 0}
