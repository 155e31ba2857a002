"""Tables and record types of the label store (see the package doc for the behaviour).

Every table the backend keeps in SQL is defined here, `training_runs` included; the
store creates them all on open (`metadata.create_all`).

SQLAlchemy Core, no ORM: the same table definitions run on SQLite (default) and on
PostgreSQL (DATABASE_URL). All timestamps are stored as naive UTC datetimes, because
SQLite has no time zones and comparing aware with naive values fails.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per Label Studio annotation id (ids are unique within a Label Studio instance).
# A deleted annotation keeps its row as a tombstone (deleted=True) so a late webhook or a
# reconcile never brings it back.
annotations = Table(
    "annotations",
    metadata,
    Column("annotation_id", BigInteger, primary_key=True, autoincrement=False),
    Column("project_id", BigInteger, nullable=True),  # unknown for a bare tombstone
    Column("task_id", BigInteger, nullable=True),
    Column("image_ref", Text, nullable=True),  # the task's data URL, as Label Studio gives it
    Column("annotator", BigInteger, nullable=True),  # completed_by
    Column("lead_time", Float, nullable=True),
    Column("created_at", DateTime, nullable=True),  # Label Studio's, UTC
    Column("updated_at", DateTime, nullable=True),  # Label Studio's, UTC: the upsert key
    Column("was_cancelled", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_at", DateTime, nullable=True),
    Column("parent_prediction", BigInteger, nullable=True),  # prediction id it started from
    Column("model_version", Text, nullable=True),  # of that prediction, when known
    Column("prediction_json", Text, nullable=True),  # the annotation's `prediction` field
    Column("result_json", Text, nullable=True),  # the full result (masks can be re-decoded)
    Column("stored_at", DateTime, nullable=False),  # when this backend stored it
    # pre-annotation regions served for the task that the annotation does not contain
    # (the annotator deleted them); NULL when nothing served for the task is known
    Column("served_deleted", Integer, nullable=True),
)
Index("ix_annotations_project", annotations.c.project_id, annotations.c.deleted)

# One row per object mask of an annotation; replaced as a whole on ANNOTATION_UPDATED.
objects = Table(
    "objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "annotation_id",
        BigInteger,
        ForeignKey("annotations.annotation_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("number", Integer, nullable=False),  # 1..n within the annotation, result order
    Column("region_id", String(64), nullable=True),  # Label Studio's result id
    Column("from_name", String(128), nullable=True),
    Column("label", String(256), nullable=False),  # Label Studio label name, as written
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("area", BigInteger, nullable=False),  # mask pixels
    Column("mask_path", Text, nullable=False),  # relative to the data directory
    Column("score", Float, nullable=True),
    Column("origin", String(32), nullable=True),  # prediction | prediction-changed | manual
    # the served region (served_regions) with this object's region id, when there is one:
    # IoU of its mask with the final one, its model version, kind and label
    Column("start_iou", Float, nullable=True),
    Column("start_model_version", Text, nullable=True),
    Column("start_kind", String(16), nullable=True),  # preannotation | click
    Column("start_label", String(256), nullable=True),
)
Index("ix_objects_annotation", objects.c.annotation_id)

# Clicks the annotators made (interactive /predict), for click-level training later.
clicks = Table(
    "clicks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project_id", BigInteger, nullable=False),
    Column("task_id", BigInteger, nullable=False),
    Column("region_id", String(64), nullable=True),  # the keypoint's id: dedupes resends
    Column("x", Float, nullable=False),  # percent (0-100) of the original image width
    Column("y", Float, nullable=False),  # percent (0-100) of the original image height
    Column("is_positive", Boolean, nullable=False),
    Column("label", String(256), nullable=True),
    Column("image_width", Integer, nullable=True),  # original_width, when sent
    Column("image_height", Integer, nullable=True),
    Column("model_version", Text, nullable=True),  # the model that answered the click
    Column("created_at", DateTime, nullable=False),
)
# Label Studio resends every keypoint of the region on each click; (task, region id) makes
# recording idempotent. NULL region ids never collide (SQL unique semantics).
Index("ux_clicks_task_region", clicks.c.task_id, clicks.c.region_id, unique=True)
Index("ix_clicks_project_task", clicks.c.project_id, clicks.c.task_id)


# Every brush region this backend served (bulk /predict, the project pre-annotation job,
# interactive clicks), so an annotation can be compared with what the annotator started
# from: Label Studio's webhooks carry `annotation.prediction = {}` and no predictions, but
# an accepted region keeps its result id. Kept SERVED_RETENTION_DAYS (served.py).
served_regions = Table(
    "served_regions",
    metadata,
    Column("task_id", BigInteger, primary_key=True, autoincrement=False),
    Column("region_id", String(64), primary_key=True),  # the result `id` we gave it
    Column("kind", String(16), nullable=False),  # preannotation | click
    Column("model_version", Text, nullable=True),
    Column("label", String(256), nullable=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("rle", Text, nullable=False),  # JSON list: the brush RLE exactly as served
    Column("served_at", DateTime, nullable=False),
)
Index("ix_served_regions_served_at", served_regions.c.served_at)

# One row per fine-tuning run (training_job.py writes it from start to finish; the
# dashboard and /metrics read it). Created with the other tables since this package
# holds them all; a database made before that gets it from create_all on the next open.
training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("project", BigInteger, nullable=True),  # None: trained on all projects
    Column("started_at", DateTime, nullable=False),  # naive UTC, like the store
    Column("finished_at", DateTime, nullable=True),
    Column("status", String(32), nullable=False),  # running | finished | failed
    Column("data_size", Integer, nullable=True),  # annotations trained on
    Column("duration_s", Float, nullable=True),
    Column("candidate_version", Text, nullable=True),
    Column("current_version", Text, nullable=True),  # active when the run started
    Column("metrics_json", Text, nullable=True),  # {"candidate": {...}, "current": {...}}
    Column("decision", String(32), nullable=True),  # promoted | rejected | none
    Column("reason", Text, nullable=True),
    Column("guard", Text, nullable=True),  # which guard set the gate used (training_job.py)
)
Index("ix_training_runs_project", training_runs.c.project, training_runs.c.started_at)

# Columns added after the first release: opening the store adds them to an existing database
# (create_all creates missing tables only, never missing columns).
ADDED_COLUMNS = (
    (annotations, "served_deleted"),
    (objects, "start_iou"),
    (objects, "start_model_version"),
    (objects, "start_kind"),
    (objects, "start_label"),
    (training_runs, "guard"),
)


def utc_naive(value: dt.datetime | None) -> dt.datetime | None:
    """Aware -> naive UTC; naive values are taken to be UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class ObjectRecord:
    """One brush region, its mask decoded (uint8 HxW, nonzero = object)."""

    label: str
    mask: np.ndarray
    region_id: str | None = None
    from_name: str | None = None
    score: float | None = None
    origin: str | None = None


@dataclass(frozen=True)
class ServedRegion:
    """One brush region as served to Label Studio (see `served_regions`)."""

    region_id: str
    kind: str  # preannotation | click
    model_version: str | None
    label: str | None
    width: int
    height: int
    rle: tuple[int, ...]


@dataclass
class AnnotationRecord:
    """One Label Studio annotation, parsed and validated (webhooks.parse_annotation)."""

    annotation_id: int
    project_id: int
    task_id: int
    image_ref: str | None
    updated_at: dt.datetime
    created_at: dt.datetime | None = None
    annotator: int | None = None
    lead_time: float | None = None
    was_cancelled: bool = False
    parent_prediction: int | None = None
    model_version: str | None = None
    prediction: Any = None
    result: list[Any] = field(default_factory=list)
    objects: list[ObjectRecord] = field(default_factory=list)


@dataclass(frozen=True)
class ClickRecord:
    """One interactive click as stored, in Label Studio's unit: percent of the original
    image (the model's own click is `squeezesam.models.clicks.Click`, in pixels)."""

    x: float
    y: float
    is_positive: bool
    label: str | None = None
    region_id: str | None = None
    image_width: int | None = None
    image_height: int | None = None


@dataclass(frozen=True)
class StoredObject:
    number: int
    label: str
    width: int
    height: int
    area: int
    mask_path: Path  # absolute
    region_id: str | None
    score: float | None
    origin: str | None


@dataclass(frozen=True)
class StoredAnnotation:
    annotation_id: int
    project_id: int
    task_id: int
    image_ref: str | None
    annotator: int | None
    lead_time: float | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    parent_prediction: int | None
    model_version: str | None
    objects: tuple[StoredObject, ...]
