"""Label Studio webhooks (and a periodic API catch-up) into the label store.

`handle_event(store, payload)` is what `/webhook` calls. Label Studio gives a webhook 1 s
and never resends it, so this stays synchronous but small: parse, decode the brush RLE,
write a few PNGs, one transaction (a few ms per mask; see tests). Whatever a webhook
missed (backend down, timeout), `reconcile` catches up from the Label Studio API.

Payload shapes: ../shared/labelstudio/README.md section 6 and captures 09, 62-72.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from squeezesam.backend.labelstudio import PayloadError as _LSPayloadError
from squeezesam.backend.masks import decode_brush_rle
from squeezesam.backend.store import Store
from squeezesam.backend.store_schema import AnnotationRecord, Click, ObjectRecord, ServedRegion

log = logging.getLogger(__name__)

# The SDK's TRAIN_EVENTS says ANNOTATION_DELETED; Label Studio 1.23.2 sends the plural.
DELETE_ACTIONS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")


class PayloadError(_LSPayloadError):
    """A malformed webhook or annotation (a ValueError; `status` 400 for the HTTP answer)."""


class ReconcileError(RuntimeError):
    """Label Studio could not be read; the store was not changed."""


# --- webhooks -----------------------------------------------------------------------------


def handle_event(store: Store, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Apply one webhook. Returns a small JSON-able summary for the HTTP answer.

    - ANNOTATION_CREATED / ANNOTATION_UPDATED -> {"status": "ok", "result": created |
      updated | duplicate | deleted, "annotation": id}
    - ANNOTATIONS_DELETED -> {"status": "ok", "deleted": n}
    - START_TRAINING -> {"status": "ok", "train_requested": True, "project": id}
      (the caller enqueues the training job; it is not started here)
    - TASKS_CREATED -> {"status": "ok", "tasks": [ids], "project": id} (for pre-annotation)
    - anything else -> {"status": "ignored"}
    """
    if not isinstance(payload, Mapping):
        raise PayloadError("webhook body must be a JSON object")
    action = payload.get("action")
    if not isinstance(action, str) or not action:
        raise PayloadError("webhook body has no 'action'")
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        record = parse_annotation(payload.get("annotation"), payload.get("task"),
                                  payload.get("project"))  # fmt: skip
        result = store.save_annotation(record)
        log.info("webhook %s annotation %s: %s", action, record.annotation_id, result)
        return {"status": "ok", "result": result, "annotation": record.annotation_id}
    if action in DELETE_ACTIONS:
        items = payload.get("annotations")
        if not isinstance(items, list):
            raise PayloadError(f"{action} needs a list 'annotations' of {{'id': ...}}")
        ids = [_int(item.get("id") if isinstance(item, Mapping) else None, "annotations[].id")
               for item in items]  # fmt: skip
        project = _project_id(payload.get("project"), required=False)
        return {"status": "ok", "deleted": store.mark_deleted(ids, project)}
    if action == "START_TRAINING":
        return {"status": "ok", "train_requested": True,
                "project": _project_id(payload.get("project"))}  # fmt: skip
    if action == "TASKS_CREATED":
        tasks = payload.get("tasks")
        if not isinstance(tasks, list):
            raise PayloadError("TASKS_CREATED needs a list 'tasks'")
        ids = [_int(t.get("id") if isinstance(t, Mapping) else None, "tasks[].id") for t in tasks]
        return {"status": "ok", "tasks": ids,
                "project": _project_id(payload.get("project"), required=False)}  # fmt: skip
    return {"status": "ignored"}


def parse_annotation(annotation: Any, task: Any, project: Any = None) -> AnnotationRecord:
    """A Label Studio annotation (+ its task) -> AnnotationRecord with decoded masks.

    Only brush regions carry masks (type brushlabels, value.format rle); keypoints and
    rectangles in the same result are prompts, kept in result_json but not objects.
    """
    if not isinstance(annotation, Mapping):
        raise PayloadError("'annotation' must be an object")
    if not isinstance(task, Mapping):
        raise PayloadError("'task' must be an object")
    annotation_id = _int(annotation.get("id"), "annotation.id")
    task_id = _int(task.get("id", annotation.get("task")), "task.id")
    project_id = _project_id(
        annotation.get("project") or task.get("project") or project, what="annotation.project"
    )
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise PayloadError(f"annotation {annotation_id}: 'result' must be a list")
    data = task.get("data")
    image_ref = _first_string(data) if isinstance(data, Mapping) else None
    cancelled = bool(annotation.get("was_cancelled"))
    objects = [] if cancelled else _brush_objects(annotation_id, result)
    parent = annotation.get("parent_prediction")
    prediction = annotation.get("prediction") or None
    lead = annotation.get("lead_time")
    return AnnotationRecord(
        annotation_id=annotation_id,
        project_id=project_id,
        task_id=task_id,
        image_ref=image_ref,
        created_at=_time(annotation.get("created_at"), "created_at", required=False),
        updated_at=_time(
            annotation.get("updated_at") or annotation.get("created_at"), "updated_at"
        ),  # fmt: skip
        annotator=_optional_int(annotation.get("completed_by")),
        lead_time=float(lead) if isinstance(lead, int | float) and math.isfinite(lead) else None,
        was_cancelled=cancelled,
        parent_prediction=_optional_int(parent),
        model_version=_model_version(prediction, parent, task),
        prediction=prediction,
        result=result,
        objects=objects,
    )


def _brush_objects(annotation_id: int, result: list[Any]) -> list[ObjectRecord]:
    out = []
    for i, region in enumerate(result):
        if not isinstance(region, Mapping) or region.get("type") != "brushlabels":
            continue
        value = region.get("value")
        where = f"annotation {annotation_id} result[{i}]"
        if not isinstance(value, Mapping) or value.get("format", "rle") != "rle":
            raise PayloadError(f"{where}: brush value must have format 'rle'")
        rle = value.get("rle")
        width = _int(region.get("original_width"), f"{where}.original_width")
        height = _int(region.get("original_height"), f"{where}.original_height")
        if not isinstance(rle, list) or not rle or width <= 0 or height <= 0:
            raise PayloadError(f"{where}: needs a non-empty 'rle' list and a positive size")
        try:  # bounded: the RLE's claimed length is checked before anything is allocated
            mask = decode_brush_rle(rle, width, height)
        except ValueError as exc:
            raise PayloadError(f"{where}: {exc}") from None
        labels = value.get("brushlabels") or []
        label = labels[0] if isinstance(labels, list) and labels else ""
        score = region.get("score")
        out.append(ObjectRecord(
            label=str(label), mask=mask, region_id=_optional_str(region.get("id")),
            from_name=_optional_str(region.get("from_name")),
            score=float(score) if isinstance(score, int | float) else None,
            origin=_optional_str(region.get("origin")),
        ))  # fmt: skip
    return out


def _model_version(prediction: Any, parent: Any, task: Mapping[str, Any]) -> str | None:
    """The model version of the prediction the annotator started from, where the payload
    says it: the annotation's `prediction` object (empty in the webhook captures), else the
    task's `predictions` list (present in API listings, absent from webhooks)."""
    if isinstance(prediction, Mapping) and prediction.get("model_version"):
        return str(prediction["model_version"])
    for p in task.get("predictions") or []:
        if isinstance(p, Mapping) and parent is not None and p.get("id") == parent:
            return _optional_str(p.get("model_version"))
    return None


def clicks_from_context(context: Any) -> list[Click]:
    """The keypoints of an interactive /predict `params.context` as Click rows.

    Rectangles are not clicks and are skipped; malformed regions are skipped too (the
    predict path validates them itself; recording must never fail a click)."""
    items = context.get("result") if isinstance(context, Mapping) else None
    out = []
    for item in items if isinstance(items, list) else []:
        value = item.get("value") if isinstance(item, Mapping) else None
        if not isinstance(value, Mapping) or item.get("type") != "keypointlabels":
            continue
        x, y = value.get("x"), value.get("y")
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (x, y)):
            continue
        labels = value.get("keypointlabels") or value.get("labels") or []
        out.append(Click(
            x=float(x), y=float(y), is_positive=item.get("is_positive", True) is not False,
            label=str(labels[0]) if isinstance(labels, list) and labels else None,
            region_id=_optional_str(item.get("id")),
            image_width=_optional_int(item.get("original_width")),
            image_height=_optional_int(item.get("original_height")),
        ))  # fmt: skip
    return out


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


def record_served(store: Store, task_id: Any, item: Any, kind: str) -> int:
    """store.record_served for one served item; logs and returns 0 on any failure."""
    try:
        regions = served_regions_of(item, kind)
        if not regions or _optional_int(task_id) is None:
            return 0
        return store.record_served(task_id, regions)
    except Exception as exc:  # never fail a prediction for this
        log.warning("served regions of task %s not recorded: %s: %s", task_id,
                    type(exc).__name__, exc)  # fmt: skip
        return 0


# --- reconcile ----------------------------------------------------------------------------


class AnnotationSource(Protocol):
    """What reconcile needs from Label Studio."""

    def list_annotations(
        self, project_id: int
    ) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        """Every current annotation of the project as (task, annotation) pairs."""
        ...


class LabelStudioSource:
    """The real source: label-studio-sdk 2.x, tasks listed with their annotations."""

    def __init__(self, base_url: str, api_key: str, page_size: int = 100) -> None:
        from label_studio_sdk import LabelStudio  # heavy import, only when reconciling

        self.client = LabelStudio(base_url=base_url, api_key=api_key)
        self.page_size = page_size

    def list_annotations(self, project_id: int) -> list[tuple[dict, dict]]:
        pairs = []
        tasks = self.client.tasks.list(project=project_id, fields="all", page_size=self.page_size)
        for task in tasks:
            # mode="json": times stay ISO strings, exactly as a webhook carries them
            t = task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)
            for a in t.get("annotations") or []:
                pairs.append((t, a if isinstance(a, dict) else dict(a)))
        return pairs


def reconcile(store: Store, source: AnnotationSource, project_id: int) -> dict[str, int]:
    """Bring the store in line with Label Studio for one project.

    Everything is read from Label Studio first; if that fails (connection error, 5xx,
    anything) a ReconcileError is raised and the store is untouched. Then missed or newer
    annotations are stored and stored ones that Label Studio no longer has are
    tombstoned. Returns counts by outcome.
    """
    try:
        pairs = list(source.list_annotations(project_id))
    except Exception as exc:
        raise ReconcileError(
            f"reading project {project_id}'s annotations from Label Studio failed: "
            f"{type(exc).__name__}: {exc}; nothing was changed"
        ) from exc
    records = []
    for task, annotation in pairs:
        try:
            records.append(parse_annotation(annotation, task, project_id))
        except PayloadError as exc:  # one bad annotation must not stop the catch-up
            log.warning("reconcile project %s: skipping: %s", project_id, exc)
    counts = {"created": 0, "updated": 0, "duplicate": 0, "deleted": 0, "tombstoned": 0}
    for record in records:
        counts[store.save_annotation(record)] += 1
    present = {r.annotation_id for r in records} | {
        _optional_int(a.get("id")) for _, a in pairs if isinstance(a, Mapping)
    }
    gone = store.annotation_ids(project_id) - present
    counts["tombstoned"] = store.mark_deleted(sorted(gone), project_id) if gone else 0
    return counts


# --- small validators ---------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise PayloadError(f"{what} must be an integer, got {value!r}")
    return value


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _project_id(value: Any, required: bool = True, what: str = "project") -> int | None:
    """A project as webhooks send it (the project object), an id, or /predict's
    "<id>.<created timestamp>" string."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, str) and "." in value:
        value = value.split(".", 1)[0]
    if value is None and not required:
        return None
    return _int(value, f"{what} id")


def project_id_of(value: Any) -> int:
    """Public form of the project parser, for the /predict handler."""
    result = _project_id(value)
    assert result is not None
    return result


def _time(value: Any, what: str, required: bool = True) -> dt.datetime | None:
    if value is None and not required:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str):
        raise PayloadError(f"annotation.{what} must be an ISO time string, got {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PayloadError(f"annotation.{what} is not an ISO time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _first_string(data: Mapping[str, Any]) -> str | None:
    """The task's image reference: `data.image`, else the first string value."""
    if isinstance(data.get("image"), str):
        return data["image"]
    return next((v for v in data.values() if isinstance(v, str)), None)
