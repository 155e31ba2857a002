"""Zero-click whole objects: saliency -> components -> clicks -> refined masks.

The SqueezeSAM paper starts interaction from salient object detection; we go one
step further for pre-annotation and turn each salient component into its own
object: click points at its most interior point (more for large or elongated
components), one network pass per object with those clicks and the component as
the previous mask, then de-duplication by IoU. A component that one click shows to
be a group (people side by side) is covered one object a pass instead (find_objects).
numpy/OpenCV/onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from squeezesam.models.clicks import Click, interior_point, iou
from squeezesam.models.predictor import Predictor, PreparedImage, _sigmoid, classify, letterbox

MIN_AREA_FRACTION = 0.01  # components smaller than 1% of the image are ignored
MAX_OBJECTS = 8
DEDUP_IOU = 0.7


@dataclass
class FoundObject:
    mask: np.ndarray  # bool (H, W), original resolution
    score: float  # predicted IoU
    label: str
    class_probs: dict[str, float]
    clicks: list[Click]  # in original pixels


def component_clicks(component: np.ndarray, max_clicks: int = 3) -> list[Click]:
    """Interior points of a component: one, plus more for large or elongated shapes.

    Each next point is the most interior point once a disk around the previous ones
    is removed, so points spread along an elongated body (a lying dog, a person).
    """
    region = component.astype(np.uint8)
    ys, xs = np.nonzero(component)
    height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
    elongated = max(height, width) / max(1, min(height, width)) > 2.0
    large = component.mean() > 0.15
    n = max_clicks if (elongated or large) else 1
    clicks: list[Click] = []
    first_depth = None
    for _ in range(n):
        point = interior_point(region > 0)
        if point is None:
            break
        y, x, depth = point
        if first_depth is None:
            first_depth = depth
        elif depth < 0.5 * first_depth:  # too close to the edge: not worth a click
            break
        clicks.append(Click(y, x, True))
        cv2.circle(region, (x, y), int(2 * depth), 0, -1)
    return clicks


def saliency(predictor: Predictor, prepared: PreparedImage, size: int | None = None) -> np.ndarray:
    """Zero-click probability map at working resolution (unpadded).

    With `size` (a long side smaller than the working size) the saliency pass runs on a
    downscaled copy and its map is upsampled: it only has to find the objects, and the
    per-object passes that draw their outlines still run at the working size.
    """
    h, w = prepared.valid_size
    if size is None or size >= max(h, w):
        logits, _, _ = predictor.run_network(prepared.pixels, [], None)
        return _sigmoid(logits[:h, :w])
    small = letterbox(np.ascontiguousarray(prepared.pixels[:h, :w]), size)
    sh, sw = small.valid_size
    logits, _, _ = predictor.run_network(small.pixels, [], None)
    return cv2.resize(_sigmoid(logits[:sh, :sw]), (w, h), interpolation=cv2.INTER_LINEAR)


def find_objects(
    predictor: Predictor,
    prepared: PreparedImage,
    min_area_fraction: float = MIN_AREA_FRACTION,
    max_objects: int = MAX_OBJECTS,
    saliency_size: int | None = None,
) -> list[FoundObject]:
    """Whole-object masks of the salient objects, largest component first.

    Each salient component is first clicked once at its most interior point with no
    previous mask: whole-object training makes that pass answer with one object. When
    that object fills the component (one subject, the common case) the component's own
    pass draws it (several clicks, the component as previous mask: the better outline).
    Otherwise the component is a group (people side by side merge in the saliency map):
    the object is kept and the rest of the group is covered one object at a time.
    """
    h, w = prepared.valid_size
    prob = saliency(predictor, prepared, saliency_size)
    binary = (prob > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    min_area = min_area_fraction * h * w
    found: list[_Region] = []
    for i in order[:max_objects]:
        if stats[i, cv2.CC_STAT_AREA] < min_area or len(found) >= max_objects:
            break
        component = labels == i
        y, x, _ = interior_point(component)  # type: ignore[misc]  (never empty)
        first = _run(predictor, prepared, [Click(y, x, True)], None)
        if (component & ~first.mask).sum() < ONE_OBJECT_LEFT * component.sum():
            _keep(found, _run(predictor, prepared, component_clicks(component), component))
            continue
        _keep(found, first)
        _cover_group(predictor, prepared, component & ~first.mask, found, min_area, max_objects)
    return [_full_size(r, prepared) for r in found]


# A first object leaving under this share of its component uncovered is the component.
ONE_OBJECT_LEFT = 0.2
# At most this many more passes per group, each on the largest uncovered part.
COVER_PASSES = 3
# A covering pass's object is kept only when it is a person or pet this likely: groups
# are what the product finds people and pets in, and the rest of a group is often
# background that a stray click would turn into an unmatched region.
COVER_PEOPLE_PETS_P = 0.5


@dataclass
class _Region:
    prob: np.ndarray  # float32 (h, w), working resolution, unpadded
    score: float
    cls: np.ndarray
    clicks: list[Click]  # working pixels

    @cached_property  # read again and again by _keep and _cover_group; prob never changes
    def mask(self) -> np.ndarray:
        return self.prob > 0.5


def _run(
    predictor: Predictor, prepared: PreparedImage, clicks: list[Click], prev: np.ndarray | None
) -> _Region:
    """One pass with these clicks (and this component as previous mask)."""
    h, w = prepared.valid_size
    prev_full = None
    if prev is not None:
        prev_full = np.zeros(prepared.pixels.shape[:2], np.float32)
        prev_full[:h, :w] = prev
    logits, score, cls = predictor.run_network(prepared.pixels, clicks, prev_full)
    return _Region(_sigmoid(logits[:h, :w]), score, cls, clicks)


def _keep(found: list[_Region], region: _Region) -> bool:
    """Keep a non-empty region unless it repeats one already found."""
    if not region.mask.any() or any(iou(region.mask, r.mask) > DEDUP_IOU for r in found):
        return False
    found.append(region)
    return True


def _cover_group(
    predictor: Predictor,
    prepared: PreparedImage,
    rest: np.ndarray,
    found: list[_Region],
    min_area: float,
    max_objects: int,
) -> None:
    """Click the largest uncovered part of a group, one object a pass, until what is left
    is small, COVER_PASSES are spent or max_objects are found."""
    for r in found:  # objects of earlier components may reach into this one
        rest &= ~r.mask
    for _ in range(COVER_PASSES):
        if len(found) >= max_objects:
            return
        count, labels, stats, _ = cv2.connectedComponentsWithStats(rest.astype(np.uint8))
        if count <= 1:
            return
        j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[j, cv2.CC_STAT_AREA] < min_area:
            return
        part = labels == j
        y, x, _ = interior_point(part)  # type: ignore[misc]
        region = _run(predictor, prepared, [Click(y, x, True)], None)
        _, probs = classify(region.cls)
        if probs.get("person", 0.0) + probs.get("pet", 0.0) >= COVER_PEOPLE_PETS_P:
            _keep(found, region)
        # the answer leaves the part's other objects for the next pass; an answer that
        # misses its own click would be asked again: the part is given up instead
        rest &= ~region.mask
        if not region.mask[y, x]:
            rest &= ~part


def _full_size(region: _Region, prepared: PreparedImage) -> FoundObject:
    """The region at the original resolution, with its label and clicks: its probability
    upsampled and thresholded as a click's is (`Predictor.predict`), so a photo larger
    than the working size gets a smooth outline, not the working grid's staircase. (The
    guided filter that clicks get is not applied here: measured on the val splits it cost
    coco128_seg one of its 25 people/pets found; MODEL_CARD.)"""
    oh, ow = prepared.original_size
    label, class_probs = classify(region.cls)
    full = cv2.resize(region.prob, (ow, oh), interpolation=cv2.INTER_LINEAR)
    back = 1.0 / prepared.scale
    return FoundObject(
        mask=full > 0.5,
        score=region.score,
        label=label,
        class_probs=class_probs,
        clicks=[c.scaled(back) for c in region.clicks],
    )
