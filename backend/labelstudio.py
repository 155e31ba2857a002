"""Label Studio payloads in, brush results out (shapes: ../shared/labelstudio/README.md).

Config parsing goes through label-studio-sdk's LabelInterface, never by hand. The web
process turns a `/predict` body into plain, picklable job specs (`Prompt`,
`TaskImage`), parsing an interactive context once: the prompt the model gets and the
click records the label store keeps come from the same parse. The worker turns a mask
back into a `brushlabels` result with the SDK's RLE encoder.
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squeezesam.backend.cloud_storage import CloudRefError, task_ref
from squeezesam.backend.store.schema import ClickRecord

SMART_TOOLS = ("KeyPointLabels", "RectangleLabels")


class PayloadError(ValueError):
    """A request we cannot serve; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProjectConfig:
    """What we need from a labeling config: where the image is and where masks go."""

    image_name: str  # <Image name=...>: the results' to_name
    image_key: str  # the task data key of its value ("$image" -> "image")
    brush_name: str  # <BrushLabels name=...>: the results' from_name
    brush_labels: tuple[str, ...]
    smart_tools: dict[str, str] = field(default_factory=dict)  # from_name -> tag


def parse_label_config(xml: Any) -> ProjectConfig:
    """Find Image + BrushLabels (+ smart KeyPointLabels/RectangleLabels), or say what's missing."""
    if not isinstance(xml, str):  # checked before the cache: a list/dict is unhashable
        raise PayloadError(f"the label config must be an XML string, got {type(xml).__name__}", 422)
    if not xml.strip():
        raise PayloadError("the label config is empty", 422)
    return _parse_label_config(xml)


@functools.lru_cache(maxsize=64)  # LabelInterface costs milliseconds; configs repeat
def _parse_label_config(xml: str) -> ProjectConfig:
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises several types for malformed XML
        raise PayloadError(f"the label config is not valid XML: {exc}", 422) from None
    images = [o for o in interface.objects if o.tag == "Image"]
    if not images:
        raise PayloadError("unsupported label config: no <Image> tag", 422)
    brushes = [c for c in interface.controls if c.tag == "BrushLabels"]
    image_names = {o.name for o in images}
    brushes = [c for c in brushes if set(c.to_name) & image_names]
    if not brushes:
        raise PayloadError(
            "unsupported label config: no <BrushLabels> pointing at an <Image> "
            "(masks are returned as brush labels)",
            422,
        )
    brush = brushes[0]
    image = next(o for o in images if o.name in brush.to_name)
    value = image.value or ""
    if not value.startswith("$"):
        raise PayloadError(f"unsupported label config: <Image value={value!r}> is not $variable")
    smart = {
        c.name: c.tag
        for c in interface.controls
        if c.tag in SMART_TOOLS and image.name in c.to_name and _is_true(c.attr.get("smart"))
    }
    # No smart tool is fine: pre-annotation (bulk /predict) needs none, and clicks are
    # recognised by their region type (keypointlabels/rectanglelabels), as sent.
    return ProjectConfig(
        image_name=image.name,
        image_key=value[1:],
        brush_name=brush.name,
        brush_labels=tuple(brush.labels or ()),
        smart_tools=smart,
    )


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


# --- tasks and prompts -------------------------------------------------------------


@dataclass(frozen=True)
class TaskImage:
    task_id: Any
    ref: str  # as found in task data: /data/upload/..., /data/local-files/?d=..., http(s)://...


def task_image(task: Any, config: ProjectConfig) -> TaskImage:
    if not isinstance(task, dict):
        raise PayloadError("a task is not a JSON object")
    data = task.get("data")
    ref = data.get(config.image_key) if isinstance(data, dict) else None
    if not isinstance(ref, str) or not ref.strip():
        raise PayloadError(
            f"task {task.get('id')!r} has no image: data.{config.image_key} is missing or empty",
            422,
        )
    try:  # a cloud-storage URI: its task's presign path at Label Studio (cloud_storage.py)
        return TaskImage(task.get("id"), task_ref(ref.strip(), task.get("id")))
    except CloudRefError as exc:
        raise PayloadError(str(exc), exc.status) from None


@dataclass(frozen=True)
class Prompt:
    """One interactive request, in percent of the image (0-100): converted to pixels by
    the worker once it knows the image's real size (`prompt_clicks`)."""

    points: tuple[tuple[float, float, bool], ...]  # (x%, y%, positive)
    box: tuple[float, float, float, float] | None  # (x%, y%, w%, h%) of the last rectangle
    label: str | None  # the label the annotator's last keypoint/rectangle carried
    # the keypoints as the label store records them (rectangles are not clicks)
    records: tuple[ClickRecord, ...] = ()


def parse_context(context: Any, config: ProjectConfig) -> Prompt:
    """Keypoints (with is_positive) and rectangles drawn with the project's smart tools.

    Strict: a malformed region fails the request (422). The keypoints also come back as
    the click records the label store keeps (`Prompt.records`), so the web process parses
    the context once."""
    items = context.get("result") if isinstance(context, dict) else None
    if not isinstance(items, list) or not items:
        raise PayloadError("params.context.result must be a non-empty list of regions", 422)
    points: list[tuple[float, float, bool]] = []
    records: list[ClickRecord] = []
    box = None
    label = negative_label = None  # a negative click's label names what it is NOT
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise PayloadError("a context region is not an object with a 'value'", 422)
        kind, value = item.get("type"), item["value"]
        if kind == "keypointlabels":
            x, y = _percent(value, "x"), _percent(value, "y")
            positive = item.get("is_positive", True) is not False
            points.append((x, y, positive))
            records.append(_click_record(item, x, y, positive))
            if positive:
                label = _first_label(value, "keypointlabels") or label
            else:
                negative_label = _first_label(value, "keypointlabels") or negative_label
        elif kind == "rectanglelabels":
            x, y = _percent(value, "x"), _percent(value, "y")
            w, h = _number(value, "width"), _number(value, "height")
            if w <= 0 or h <= 0 or x + w > 100.0 + 1e-6 or y + h > 100.0 + 1e-6:
                raise PayloadError(f"rectangle {x},{y} {w}x{h}% reaches outside the image", 422)
            if _number(value, "rotation", 0.0) % 360:
                raise PayloadError("rotated rectangles are not supported as prompts", 422)
            box = (x, y, w, h)
            label = _first_label(value, "rectanglelabels") or label
        # other region types (e.g. an earlier brush) are not prompts: ignored
    if not points and box is None:
        raise PayloadError("the context has no keypoint or rectangle to segment from", 422)
    return Prompt(tuple(points), box, label or negative_label, tuple(records))


def _click_record(item: dict, x: float, y: float, positive: bool) -> ClickRecord:
    """A keypoint region as the label store records it (percent, Label Studio's unit)."""
    width, height = item.get("original_width"), item.get("original_height")
    return ClickRecord(
        x=x,
        y=y,
        is_positive=positive,
        label=_first_label(item["value"], "keypointlabels"),
        region_id=str(item["id"]) if item.get("id") not in (None, "") else None,
        image_width=width if isinstance(width, int) and not isinstance(width, bool) else None,
        image_height=height if isinstance(height, int) and not isinstance(height, bool) else None,
    )


@dataclass(frozen=True)
class BrushRegion:
    """A brush region already on the task (a pre-annotation, a draft, an annotation)."""

    rle: tuple[int, ...]  # Label Studio brush RLE of an RGBA (height, width, 4) image
    width: int
    height: int
    label: str | None


REGION_SOURCES = ("drafts", "annotations", "predictions")  # most recent work first


def task_regions(task: Any, config: ProjectConfig) -> tuple[BrushRegion, ...]:
    """Brush regions of the task the interactive payload carries, in priority order.

    The annotator's own work (drafts, then annotations, newest first) comes before the
    predictions: a click refines what the annotator sees, which starts from those.
    Malformed regions are skipped: they only ever seed a previous mask.
    """
    if not isinstance(task, dict):
        return ()
    regions: list[BrushRegion] = []
    for source in REGION_SOURCES:
        items = task.get(source)
        for item in reversed(items) if isinstance(items, list) else ():
            results = item.get("result") if isinstance(item, dict) else None
            for r in results if isinstance(results, list) else ():
                region = _brush_region(r, config)
                if region is not None:
                    regions.append(region)
    return tuple(regions)


def _brush_region(r: Any, config: ProjectConfig) -> BrushRegion | None:
    if not isinstance(r, dict) or r.get("type") != "brushlabels":
        return None
    if r.get("from_name", config.brush_name) != config.brush_name:
        return None
    value, w, h = r.get("value"), r.get("original_width"), r.get("original_height")
    if not isinstance(value, dict) or value.get("format") != "rle":
        return None
    rle = value.get("rle")
    if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
        return None
    if not isinstance(rle, list) or not rle or not all(isinstance(v, int) for v in rle):
        return None
    return BrushRegion(tuple(rle), w, h, _first_label(value, "brushlabels"))


def _number(value: dict, key: str, default: float | None = None) -> float:
    raw = value.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise PayloadError(f"region value.{key} must be a number, got {raw!r}", 422)
    return float(raw)


def _percent(value: dict, key: str) -> float:
    number = _number(value, key)
    if not 0.0 <= number <= 100.0:
        raise PayloadError(f"click outside the image: {key}={number}% (must be 0-100)", 422)
    return number


def _first_label(value: dict, key: str) -> str | None:
    labels = value.get(key) or value.get("labels")
    return labels[0] if isinstance(labels, list) and labels else None


def label_key(name: str) -> str:
    """The one rule label names are compared by (here and in export_labels.label_kind):
    surrounding spaces and case do not count, so "Person", " person " and "PERSON" name
    the same label, whether a model class is matched to a config or a config label to a
    model class."""
    return name.strip().casefold()


def match_label(name: str | None, labels: Iterable[str]) -> str | None:
    """The label of `labels` that `name` names under `label_key`, or None.

    An exact match wins, then the first label with the same key (a config may hold
    labels differing only in case)."""
    if not name:
        return None
    labels = tuple(labels)
    if name in labels:
        return name
    key = label_key(name)
    return next((label for label in labels if label_key(label) == key), None)


def choose_label(prompt_label: str | None, model_class: str, config: ProjectConfig) -> str:
    """The annotator's label wins; otherwise the model's class, matched to the config."""
    labels = config.brush_labels
    label = match_label(prompt_label, labels)
    if label is None:
        label = match_label(model_class, labels)
    if label is not None:
        return label
    return labels[0] if labels else (prompt_label or model_class)


def object_label(
    model_class: str, class_probs: dict[str, float], iou: float, config: ProjectConfig
) -> tuple[str, float] | None:
    """(label, score) of a zero-click object, or None to drop it.

    The model's class (person / pet / other) picks the config's label of the same name
    (`match_label`: case and surrounding spaces do not count); a config with a single
    label takes every object under it (its one label is whatever that project segments).
    Otherwise the object is dropped: an `other` object must never show up as a person or
    a pet.

    Score: predicted IoU x probability of the label's class, i.e. "a good mask AND the
    right label", so sorting predictions by score in Label Studio puts both kinds of
    mistakes last. A single-label config ignores the class, so its score is the IoU.
    """
    label = match_label(model_class, config.brush_labels)
    if label is not None:
        return label, iou * class_probs.get(model_class, 1.0)
    if len(config.brush_labels) == 1:
        return config.brush_labels[0], iou
    return None


# --- results ------------------------------------------------------------------------


def new_region_id() -> str:
    """A region id like Label Studio's own (10 characters). Label Studio keeps a
    prediction region's id when the annotator accepts it, which is how an annotation is
    matched with what we served (served_regions in the label store)."""
    return secrets.token_hex(5)


def brush_result(
    mask: np.ndarray, label: str, score: float, config: ProjectConfig
) -> dict[str, Any]:
    """One `brushlabels` region: Label Studio's RLE of the mask at the original size,
    with a fresh region `id` (cached answers keep theirs, so a re-served region is the
    same region)."""
    from label_studio_sdk.converter.brush import mask2rle

    height, width = mask.shape
    return {
        "id": new_region_id(),
        "from_name": config.brush_name,
        "to_name": config.image_name,
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {
            "format": "rle",
            "rle": [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)],
            "brushlabels": [label],
        },
        "score": round(float(score), 4),
    }


def prediction(results: list[dict], score: float, model_version: str, **extra: Any) -> dict:
    """One item of `/predict`'s `results`: LS stores result, score and model_version."""
    item = {"result": results, "score": round(float(score), 4), "model_version": model_version}
    return item | extra


def prompt_clicks(prompt: Prompt, height: int, width: int) -> tuple[list, tuple | None]:
    """Percent prompt -> (clicks in original pixels, box (x0, y0, x1, y1) in pixels or None).

    Rectangle prompts (the network only knows clicks): the box's centre becomes a
    positive click unless a positive keypoint already lies inside the box, and the mask
    is later clipped to the box (`masks.clip_to_box`): pixels outside the rectangle are
    not the object. Documented in the README ("Rectangle prompts").
    """
    from squeezesam.models.clicks import Click

    def px(x: float, y: float) -> tuple[float, float]:
        # percent of the original size; clamp the 100% edge onto the last pixel
        return min(y / 100.0 * height, height - 1.0), min(x / 100.0 * width, width - 1.0)

    clicks = []
    for x, y, positive in prompt.points:
        py, pxx = px(x, y)
        clicks.append(Click(py, pxx, positive))
    box = None
    if prompt.box is not None:
        bx, by, bw, bh = prompt.box
        x0, y0 = bx / 100.0 * width, by / 100.0 * height
        x1, y1 = (bx + bw) / 100.0 * width, (by + bh) / 100.0 * height
        box = (x0, y0, x1, y1)
        inside = any(c.positive and x0 <= c.x <= x1 and y0 <= c.y <= y1 for c in clicks)
        if not inside:
            cy, cx = px(bx + bw / 2.0, by + bh / 2.0)
            clicks.append(Click(cy, cx, True))
    return clicks, box
