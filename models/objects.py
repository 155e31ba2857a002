"""Zero-click whole objects: saliency -> components -> clicks -> refined masks.

The SqueezeSAM paper starts interaction from salient object detection; we go one
step further for pre-annotation and turn each salient component into its own
object: click points at its most interior point (more for large or elongated
components), one network pass per object with those clicks and the component as
the previous mask, then de-duplication by IoU. numpy/OpenCV/onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Whole-object masks of the salient objects, largest first."""
    h, w = prepared.valid_size
    prob = saliency(predictor, prepared, saliency_size)
    binary = (prob > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    min_area = min_area_fraction * h * w
    ph, pw = prepared.pixels.shape[:2]
    oh, ow = prepared.original_size
    found: list[tuple[FoundObject, np.ndarray]] = []
    for i in order[:max_objects]:
        if stats[i, cv2.CC_STAT_AREA] < min_area:
            break
        component = (labels == i).astype(np.uint8)
        clicks = component_clicks(component.astype(bool))
        prev = np.zeros((ph, pw), np.float32)
        prev[:h, :w] = component
        logits, score, cls = predictor.run_network(prepared.pixels, clicks, prev)
        small = _sigmoid(logits[:h, :w]) > 0.5
        if not small.any():
            continue
        if any(iou(small, other) > DEDUP_IOU for _, other in found):
            continue
        label, class_probs = classify(cls)
        full = cv2.resize(small.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST) > 0
        back = 1.0 / prepared.scale
        found.append(
            (
                FoundObject(
                    mask=full,
                    score=score,
                    label=label,
                    class_probs=class_probs,
                    clicks=[c.scaled(back) for c in clicks],
                ),
                small,
            )
        )
    return [f for f, _ in found]
