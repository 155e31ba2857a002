"""Clicks for training examples (click examples only; zero-click examples have none).

`simulate_clicks` draws the first click anywhere inside the object (parts too),
sometimes with more clicks from the shared clicker on a synthetic previous mask
(`perturb_mask`), or, for over-merge corrections, a previous mask holding the target and
a neighbour with a negative click on the neighbour. `train.rollout` may replace the later
clicks with the network's own errors. Evaluation and serving never use this module
(their clicks come from the one clicker in `clicks.py`); export borrows `perturb_mask` for
its int8 calibration inputs.
"""

from __future__ import annotations

import cv2
import numpy as np

from squeezesam.models.clicks import (
    Click,
    first_click,
    interior_point,
    next_click,
    random_click_inside,
)


def perturb_mask(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect previous prediction of `gt` (float32 in [0, 1])."""
    m = gt.astype(np.uint8)
    h, w = m.shape
    r = int(rng.integers(2, max(3, int(0.06 * max(h, w)))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    op = rng.integers(4)
    if op == 0:
        m = cv2.erode(m, kernel)
    elif op == 1:
        m = cv2.dilate(m, kernel)
    ys, xs = np.nonzero(gt)
    if len(ys) and rng.random() < 0.6:  # cut a blob out, or add one nearby
        i = int(rng.integers(len(ys)))
        axes = (int(rng.integers(3, w // 4 + 4)), int(rng.integers(3, h // 4 + 4)))
        blob = np.zeros_like(m)
        cv2.ellipse(blob, (int(xs[i]), int(ys[i])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        m = m & (1 - blob) if rng.random() < 0.5 else m | blob
    soft = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0)
    return np.clip(soft, 0, 1)


def simulate_clicks(
    target: np.ndarray,
    void: np.ndarray,
    rng: np.random.Generator,
    merged: np.ndarray | None = None,
    interior_first: bool = False,
) -> tuple[list[Click], np.ndarray | None]:
    """First click anywhere inside (parts too); sometimes more clicks on a previous mask.

    With `merged` (another object's pixels), the previous mask is the target *and* that
    object, so the corrective clicks say "not this one" (negative, on the other object).
    With `interior_first`, the first click is the evaluation protocol's (the most interior
    point) instead of a random one.
    """
    if interior_first:
        first = first_click(target)
    else:
        first = random_click_inside(target, rng, min_border=2.0)
    clicks = [first] if first is not None else []
    n_more = int(rng.choice(4, p=[0.45, 0.25, 0.15, 0.15]))
    if merged is not None:
        n_more = max(1, n_more)
    if n_more == 0 or not clicks:
        return clicks, None
    prev = perturb_mask(target, rng)
    prev_bin = prev > 0.5
    if merged is not None:  # the other object whole in the mask, and a "no" on it first
        prev = np.maximum(prev, merged.astype(np.float32))
        point = interior_point(merged & ~target)
        if point is not None:
            clicks.append(Click(point[0], point[1], False))
            n_more -= 1
    # Earlier clicks: centres of error components of the previous mask...
    for _ in range(n_more - 1):
        c = next_click(prev_bin, target, void)
        if c is None:
            break
        clicks.append(c)
        y, x = int(c.y), int(c.x)
        # ...treated as fixed: the next one targets another error region.
        err = (prev_bin != target).astype(np.uint8)
        _, comp = cv2.connectedComponents(err)
        prev_bin = np.where(comp == comp[y, x], target, prev_bin)
    last = next_click(prev_bin, target, void) if n_more > 0 else None
    if last is not None:
        clicks.append(last)
    return clicks, (prev if rng.random() < 0.8 else None)
