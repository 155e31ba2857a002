"""Edge-aware smoothing of a click's mask probability with the image as guide.

He, Sun and Tang, "Guided Image Filtering" (ECCV 2010; TPAMI 2013): in every (2r+1)^2
window the output is an affine function of the guide's intensity, fitted by ridge
regression to the input. Applied to the network's probability it moves the mask edge,
which the network draws from stride-4 logits, onto the image's edges nearby, while flat
regions keep their value. Issue 18: Berkeley's unfinished objects plateau at IoU
0.86-0.89, where a pixel or two of edge decides 0.90 (MODEL_CARD, "Guided filter").

The grey guide, the radius, the regularisation and the smallest object it applies to
were chosen on the val splits (the colour guide of the paper made coco_people_pets
worse). Small objects keep the focus view's mask: at the working resolution a radius of
2 px is a large share of them. Only box filters (about 3 ms at the working size), run on
the box around the probability's uncertain band: elsewhere the probability is within
UNCERTAIN of 0 or 1 and no pixel could change side of 0.5.
"""

from __future__ import annotations

import cv2
import numpy as np

RADIUS = 2  # working pixels
EPS = 1e-3  # ridge regularisation, guide in [0, 1]
MIN_AREA = 6000  # working pixels of the mask (about 77 x 77) below which it is left alone
# Probabilities inside (UNCERTAIN, 1 - UNCERTAIN) mark the band where the filter can act.
UNCERTAIN = 0.01


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int = RADIUS, eps: float = EPS):
    """`guide` float32 (h, w) in [0, 1], `p` float32 (h, w) -> filtered float32 (h, w)
    (the paper's algorithm 1)."""
    mean_i, mean_p = _box(guide, radius), _box(p, radius)
    cov_ip = _box(guide * p, radius) - mean_i * mean_p
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius) * guide + _box(b, radius)


def refine_probability(
    image: np.ndarray,
    prob: np.ndarray,
    radius: int = RADIUS,
    eps: float = EPS,
    min_area: int = MIN_AREA,
) -> np.ndarray:
    """`image` uint8 RGB (h, w, 3) and `prob` float32 (h, w) in [0, 1], same frame ->
    the guided-filtered probability, clipped to [0, 1]; `prob` itself when its mask
    (> 0.5) is under `min_area` pixels or nothing is uncertain. Computed on the box around
    the uncertain band, grown by the filter's reach; outside that box `prob` is kept."""
    if int((prob > 0.5).sum()) < min_area:
        return prob
    band = (prob > UNCERTAIN) & (prob < 1 - UNCERTAIN)
    ys, xs = np.nonzero(band)
    if ys.size == 0:
        return prob
    grow = 2 * radius + 1
    h, w = prob.shape
    y0, y1 = max(0, ys.min() - grow), min(h, ys.max() + grow + 1)
    x0, x1 = max(0, xs.min() - grow), min(w, xs.max() + grow + 1)
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    out = prob.astype(np.float32, copy=True)
    filtered = guided_filter(grey.astype(np.float32) / 255.0, out[y0:y1, x0:x1], radius, eps)
    out[y0:y1, x0:x1] = np.clip(filtered, 0.0, 1.0)
    return out
