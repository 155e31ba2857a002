"""Label Studio webhooks into the label store (annotations in; what to queue out).

`handle_event(store, payload)` is what `/webhook` calls. Label Studio gives a webhook 1 s
and never resends it, so this stays synchronous but small: parse, decode the brush RLE,
write a few PNGs, one transaction (a few ms per mask; see tests). Whatever a webhook
missed (backend down, timeout), reconcile.py catches up from the Label Studio API with
the same `parse_annotation`.

Payload shapes: ../shared/labelstudio/README.md section 6 and captures 09, 62-72.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping
from typing import Any

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.masks import decode_brush_rle
from squeezesam.backend.store import Store
from squeezesam.backend.store.schema import AnnotationRecord, ObjectRecord

log = logging.getLogger(__name__)

# The SDK's TRAIN_EVENTS says ANNOTATION_DELETED; Label Studio 1.23.2 sends the plural.
DELETE_ACTIONS = ("ANNOTATIONS_DELETED", "ANNOTATION_DELETED")


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
        annotator=optional_int(annotation.get("completed_by")),
        lead_time=float(lead) if isinstance(lead, int | float) and math.isfinite(lead) else None,
        was_cancelled=cancelled,
        parent_prediction=optional_int(parent),
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


# --- small validators ---------------------------------------------------------------------


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise PayloadError(f"{what} must be an integer, got {value!r}")
    return value


def optional_int(value: Any) -> int | None:
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
