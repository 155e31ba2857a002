"""Mask post-processing before encoding: small islands and holes out, box clipping."""

from __future__ import annotations

import cv2
import numpy as np

# A region smaller than this fraction of the object (and of the image, see below) is
# noise: annotators would otherwise erase speckles by hand after every click.
MIN_REGION_FRACTION = 0.02
MIN_REGION_PIXELS = 16


def clean_mask(mask: np.ndarray, keep: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Remove islands and fill holes smaller than MIN_REGION_FRACTION of the object.

    `keep` lists (y, x) pixels (positive clicks) whose island is kept whatever its size:
    the annotator asked for it. The largest island always stays.
    """
    mask = mask.astype(bool)
    area = int(mask.sum())
    if area == 0:
        return mask
    limit = max(MIN_REGION_PIXELS, MIN_REGION_FRACTION * area)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    wanted = set((np.flatnonzero(areas >= limit) + 1).tolist())
    wanted.add(int(np.argmax(areas)) + 1)
    for y, x in keep or []:
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and labels[y, x]:
            wanted.add(int(labels[y, x]))
    cleaned = np.isin(labels, sorted(wanted))
    # holes: background components (4-connected, the dual of 8) not touching the border
    background = ~cleaned
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background.astype(np.uint8), 4)
    h, w = mask.shape
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1 = x0 + stats[:, cv2.CC_STAT_WIDTH]
    y1 = y0 + stats[:, cv2.CC_STAT_HEIGHT]
    interior = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
    small = interior & (stats[:, cv2.CC_STAT_AREA] < limit)
    small[0] = False  # label 0 is the object itself here
    if small.any():
        cleaned |= np.isin(labels, np.flatnonzero(small))
    return cleaned


def clip_to_box(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels outside the rectangle (x0, y0, x1, y1) in pixels are not the object."""
    x0, y0, x1, y1 = box
    h, w = mask.shape
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    clipped = np.zeros_like(mask, dtype=bool)
    clipped[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    return clipped
