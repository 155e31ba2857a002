"""The interactive trail in the label store: clicks received, brush regions served.

Clicks are kept for click-level training later. Served regions let a saved annotation be
compared with what the annotator started from (`started_from`): Label Studio keeps a
region's id when the annotator accepts a prediction, so an object whose region id is a
served region's id came from it. `record_served_item` records the regions of one `/predict`
result item as served, and never fails the prediction it records.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa

from squeezesam.backend.masks import decode_brush_rle
from squeezesam.backend.store.db import Database
from squeezesam.backend.store.schema import (
    AnnotationRecord,
    ClickRecord,
    ServedRegion,
    clicks,
    served_regions,
    utcnow,
)
from squeezesam.models.clicks import iou

log = logging.getLogger(__name__)

SERVED_RETENTION_DAYS = 60  # served regions older than this are dropped (store size)


class Start:
    """Per-object start columns (by object number), served_deleted, model version."""

    def __init__(self) -> None:
        self.objects: dict[int, dict[str, Any]] = {}
        self.deleted: int | None = None
        self.model_version: str | None = None


class Served:
    """Clicks and served regions: record, read, and measure an annotation against them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- clicks -----------------------------------------------------------------------------

    def record_clicks(
        self,
        project_id: int,
        task_id: int,
        points: Iterable[ClickRecord],
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
        with self.db.tx("recording clicks") as conn:
            return self.db.insert_new(conn, clicks, ["task_id", "region_id"], rows)

    def clicks_for_task(self, task_id: int) -> list[dict[str, Any]]:
        query = sa.select(clicks).where(clicks.c.task_id == task_id).order_by(clicks.c.id)
        with self.db.tx("reading clicks") as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

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
        with self.db.tx("recording served regions") as conn:
            new = self.db.insert_new(conn, served_regions, ["task_id", "region_id"], rows)
            cutoff = now - dt.timedelta(days=SERVED_RETENTION_DAYS)
            conn.execute(served_regions.delete().where(served_regions.c.served_at < cutoff))
        return new

    def record_served_item(self, task_id: Any, item: Any, kind: str) -> int:
        """`record_served` for one served `/predict` item; logs and returns 0 on any
        failure (never fail a prediction for this)."""
        try:
            regions = served_regions_of(item, kind)
            if not regions or _optional_int(task_id) is None:
                return 0
            return self.record_served(task_id, regions)
        except Exception as exc:
            log.warning("served regions of task %s not recorded: %s: %s", task_id,
                        type(exc).__name__, exc)  # fmt: skip
            return 0

    def served_for_task(self, task_id: int) -> list[dict[str, Any]]:
        query = (sa.select(served_regions).where(served_regions.c.task_id == task_id)
                 .order_by(served_regions.c.served_at, served_regions.c.region_id))  # fmt: skip
        with self.db.tx("reading served regions") as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def started_from(self, record: AnnotationRecord) -> Start:
        """What the annotator started from, from the regions we served for the task.

        An object whose region id is a served region's id came from it (Label Studio
        keeps a region's id when the annotator accepts a prediction): its start IoU,
        model version, kind and label. The served pre-annotation batch the annotation
        started from (the one its objects came from, else, when it has a parent
        prediction, the latest one) gives `served_deleted`: its regions no longer in the
        annotation. Never fails the save: a problem here is logged and leaves NULLs.
        """
        start = Start()
        if record.was_cancelled:
            return start
        try:
            with self.db.tx("reading served regions") as conn:
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
            return Start()
        return start


def served_regions_of(item: Any, kind: str) -> list[ServedRegion]:
    """The brush regions (with an id) of one `/predict` result item, as served.

    `item` is the item's JSON text (what the workers return) or the parsed dict. Anything
    malformed is skipped: recording what was served must never fail a prediction."""
    if isinstance(item, str | bytes):
        item = json.loads(item)
    if not isinstance(item, Mapping) or not isinstance(item.get("result"), list):
        return []
    version = _optional_str(item.get("model_version"))
    out = []
    for region in item["result"]:
        if not isinstance(region, Mapping) or region.get("type") != "brushlabels":
            continue
        value = region.get("value")
        rid, width, height = region.get("id"), region.get("original_width"), region.get(
            "original_height")  # fmt: skip
        rle = value.get("rle") if isinstance(value, Mapping) else None
        if not (isinstance(rid, str) and rid and isinstance(rle, list) and rle):
            continue
        if _optional_int(width) is None or _optional_int(height) is None:
            continue
        labels = value.get("brushlabels") or []
        out.append(ServedRegion(
            region_id=rid, kind=kind, model_version=version,
            label=str(labels[0]) if isinstance(labels, list) and labels else None,
            width=width, height=height, rle=tuple(rle),
        ))  # fmt: skip
    return out


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _iou(region: Any, mask: np.ndarray) -> float:
    served = decode_brush_rle(json.loads(region.rle), region.width, region.height) > 0
    final = mask > 0
    if served.shape != final.shape:  # another pixel grid: compare on the final one
        resized = cv2.resize(served.astype(np.uint8), final.shape[::-1],
                             interpolation=cv2.INTER_NEAREST)  # fmt: skip
        served = resized > 0
    return float(iou(served, final))
