"""Zoom-in for corrective clicks (RITM, Sofiiuk et al. 2022, section 3.3).

From the second click on, the network sees a crop around the object instead of the
whole image: the bounding box of the previous mask and every click, expanded by
EXPANSION, at least MIN_CROP original pixels a side, rescaled so its long side is the
working size. Small objects then get more network pixels for their boundary; the first
click still sees the whole image (nothing is known of the object yet). Outside the crop
the mask is background: the crop holds the previous mask and every click by design.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from squeezesam.models.clicks import Click, object_roi
from squeezesam.models.predictor import Prediction, Predictor, PreparedImage

EXPANSION = 1.4  # RITM's expansion_ratio
MIN_CROP = 64  # original pixels: caps the upscaling of tiny objects at 8x (working size 512)


@dataclass
class ZoomState:
    image: np.ndarray  # the original RGB image
    full: PreparedImage  # the whole image letterboxed, for the first click


def predict_zoomed(
    predictor: Predictor, state: ZoomState, clicks: list[Click], prev: np.ndarray | None
) -> Prediction:
    """The first click on the whole image, later ones on the object's crop. `prev` is the
    previous probability at original size; the Prediction's mask is at original size (its
    `probability` too, unlike Predictor.predict's working-resolution map)."""
    h, w = state.image.shape[:2]
    if len(clicks) <= 1 or prev is None:
        p = predictor.predict(state.full, clicks, prev)
        p.probability = cv2.resize(p.probability, (w, h), interpolation=cv2.INTER_LINEAR)
        return p
    y0, y1, x0, x1 = object_roi(prev, clicks, (h, w), EXPANSION, MIN_CROP)
    crop = predictor.prepare(np.ascontiguousarray(state.image[y0:y1, x0:x1]))
    shifted = [Click(c.y - y0, c.x - x0, c.positive) for c in clicks]
    p = predictor.predict(crop, shifted, prev[y0:y1, x0:x1])
    prob = np.zeros((h, w), np.float32)
    ch, cw = y1 - y0, x1 - x0
    prob[y0:y1, x0:x1] = cv2.resize(p.probability, (cw, ch), interpolation=cv2.INTER_LINEAR)
    return Prediction(prob > 0.5, p.score, p.label, p.class_probs, prob)
