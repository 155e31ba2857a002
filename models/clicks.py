"""Clicks: the one click encoder and the one clicker (numpy + OpenCV only).

Everything that turns clicks into network input goes through `encode_prompt`, so
training, evaluation and serving see identical channels. The clicker follows the
RITM protocol (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance"):
the first click at the most interior point of the object (evaluation) or anywhere
inside it (training), each next click at the most interior point of the largest
error region, positive for a miss and negative for a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Disk radius in pixels of the working resolution (long side 512). A binary disk is
# cheap to render, identical in every code path, and quantises to int8 without loss.
CLICK_RADIUS = 5
# Network input: 3 normalised RGB channels + positive + negative + previous mask.
NUM_INPUT_CHANNELS = 6


@dataclass(frozen=True)
class Click:
    """A click in pixel coordinates (row y, column x) of the image it refers to."""

    y: float
    x: float
    positive: bool = True

    def scaled(self, scale: float) -> Click:
        return Click(self.y * scale, self.x * scale, self.positive)


def encode_clicks(
    clicks: list[Click], height: int, width: int, radius: int = CLICK_RADIUS
) -> np.ndarray:
    """Render clicks as two binary disk maps (positive, negative): float32 (2, H, W)."""
    maps = np.zeros((2, height, width), dtype=np.float32)
    for click in clicks:
        y, x = int(round(click.y)), int(round(click.x))
        if not (0 <= y < height and 0 <= x < width):
            continue  # callers validate; a stray click never crashes the encoder
        cv2.circle(maps[0 if click.positive else 1], (x, y), radius, 1.0, thickness=-1)
    return maps


def normalise_image(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 3xHxW with TensorFlow-Lite normalisation (x-127)/128.

    EfficientNet-Lite0's ImageNet weights were trained with this normalisation.
    """
    return ((image.astype(np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def encode_prompt(
    image: np.ndarray, clicks: list[Click], prev_mask: np.ndarray | None
) -> np.ndarray:
    """The network input for one image: float32 (6, H, W).

    `image` is uint8 RGB at working resolution, `clicks` in its pixel coordinates,
    `prev_mask` a probability or 0/1 mask of the same size (None at the first click
    and in zero-click mode).
    """
    h, w = image.shape[:2]
    out = np.empty((NUM_INPUT_CHANNELS, h, w), dtype=np.float32)
    out[:3] = normalise_image(image)
    out[3:5] = encode_clicks(clicks, h, w)
    out[5] = 0.0 if prev_mask is None else prev_mask.astype(np.float32)
    return out


def _interior_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each region pixel to the nearest non-region pixel (image border counts)."""
    padded = np.pad(region.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    return dist[1:-1, 1:-1]


def interior_point(region: np.ndarray) -> tuple[int, int, float] | None:
    """Most interior pixel (y, x) of a boolean region and its distance; None if empty."""
    if not region.any():
        return None
    dist = _interior_distance(region)
    idx = int(np.argmax(dist))
    y, x = divmod(idx, region.shape[1])
    return y, x, float(dist[y, x])


def first_click(gt: np.ndarray) -> Click | None:
    """Evaluation protocol: the most interior point of the object."""
    point = interior_point(gt.astype(bool))
    return None if point is None else Click(point[0], point[1], True)


def next_click(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> Click | None:
    """The RITM next click: centre of the largest error, positive for a miss.

    Returns None when prediction and ground truth agree everywhere (outside void).
    """
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    valid = np.ones_like(gt) if void is None else ~void.astype(bool)
    fn = gt & ~pred & valid
    fp = pred & ~gt & valid
    fn_pt = interior_point(fn)
    fp_pt = interior_point(fp)
    if fn_pt is None and fp_pt is None:
        return None
    if fp_pt is None or (fn_pt is not None and fn_pt[2] >= fp_pt[2]):
        return Click(fn_pt[0], fn_pt[1], True)
    return Click(fp_pt[0], fp_pt[1], False)


def random_click_inside(
    region: np.ndarray, rng: np.random.Generator, min_border: float = 0.0
) -> Click | None:
    """Training: a uniformly random point of a region, optionally away from its edge."""
    region = region.astype(bool)
    if min_border > 0:
        deep = _interior_distance(region) > min_border
        if deep.any():
            region = deep
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None
    i = int(rng.integers(len(ys)))
    return Click(float(ys[i]), float(xs[i]), True)


def iou(pred: np.ndarray, gt: np.ndarray, void: np.ndarray | None = None) -> float:
    """IoU of two boolean masks, ignoring void pixels; 1.0 when both are empty."""
    pred = pred.astype(bool)
    gt = gt.astype(bool)
    if void is not None:
        keep = ~void.astype(bool)
        pred, gt = pred & keep, gt & keep
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


class Clicker:
    """Stateful RITM clicker for one object: shared by evaluation and training rollouts."""

    def __init__(self, gt: np.ndarray, void: np.ndarray | None = None) -> None:
        self.gt = gt.astype(bool)
        self.void = void
        self.clicks: list[Click] = []

    def make_next(self, pred: np.ndarray | None) -> Click | None:
        click = first_click(self.gt) if pred is None else next_click(pred, self.gt, self.void)
        if click is not None:
            self.clicks.append(click)
        return click


def object_roi(
    prev: np.ndarray | None,
    clicks: list[Click],
    shape: tuple[int, int],
    expansion: float,
    min_crop: int,
) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) around the mask `prev` (> 0.5) and the clicks, expanded by
    `expansion`, at least `min_crop` a side, inside `shape` (zoom-in and focus view)."""
    ys = [c.y for c in clicks]
    xs = [c.x for c in clicks]
    if prev is not None:
        my, mx = np.nonzero(prev > 0.5)
        if my.size:
            ys += [int(my.min()), int(my.max())]
            xs += [int(mx.min()), int(mx.max())]
    h, w = shape
    cy, cx = (min(ys) + max(ys)) / 2, (min(xs) + max(xs)) / 2
    half_h = max((max(ys) - min(ys) + 1) * expansion, min_crop) / 2
    half_w = max((max(xs) - min(xs) + 1) * expansion, min_crop) / 2
    y0, y1 = max(0, int(cy - half_h)), min(h, int(np.ceil(cy + half_h)))
    x0, x1 = max(0, int(cx - half_w)), min(w, int(np.ceil(cx + half_w)))
    return y0, y1, x0, x1
