"""The window a training example sees: a crop of the rescaled photo, or an object view.

`scale_and_crop` places a fixed window on a photo rescaled around the serving scale (the
targets near its centre for zero-click examples, anywhere in it for click examples);
`object_view` crops the target's box and letterboxes it, as the predictor's zoom-in and
focus view show an object to the network.
"""

from __future__ import annotations

import cv2
import numpy as np

# Long side of a rescaled training image, in crop sizes: [1, MAX_SCALE]. At 256x256 crops
# (long side 256-576) objects appear at about serving scale (long side 512) but a crop sees
# half the image; a serving-scale phase uses larger crops and a narrower range
# (e.g. --size 384 --max-scale 1.67: long side 384-640, most of the image in one crop).
MAX_SCALE = 2.25
# How far a crop's centre strays from its target, in window sizes.
SALIENCY_JITTER = 0.25
CLICK_JITTER = 0.5
# Share of click examples cropped as an object view (`object_view`): the target's box,
# expanded by a factor drawn in OBJECT_VIEW_EXPANSION, at least a side drawn in
# OBJECT_VIEW_MIN_SIDE (shares of the image's long side), letterboxed to the crop size.
# Serving shows the network such views for every corrective click (zoom-in: the box
# expanded 1.4, at least 224 of 512 working pixels) and for small objects (focus view:
# at least 64, up to 8x upscaled), while training crops saw objects at photo scale,
# often cut by the window. Off by default (the recipe's random stream stays as it was).
OBJECT_VIEW_P = 0.0
OBJECT_VIEW_EXPANSION = (1.2, 1.8)
OBJECT_VIEW_MIN_SIDE = (1 / 8, 7 / 16)


def scale_and_crop(
    image: np.ndarray,
    mask: np.ndarray,
    focus: np.ndarray,
    size: int,
    rng: np.random.Generator,
    jitter: float = SALIENCY_JITTER,
    max_scale: float = MAX_SCALE,
) -> tuple[np.ndarray, np.ndarray]:
    """Rescale (long side in [size, max_scale * size]) and crop a size x size window around
    `focus`, its centre moved by up to `jitter` window sizes."""
    h, w = mask.shape
    scale = rng.uniform(size, max_scale * size) / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = cv2.resize(
        image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    focus = cv2.resize(focus.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(focus)
    cy, cx = (ys.mean(), xs.mean()) if len(ys) else (nh / 2, nw / 2)
    cy += rng.uniform(-jitter, jitter) * size
    cx += rng.uniform(-jitter, jitter) * size
    y0 = int(np.clip(cy - size / 2, 0, max(0, nh - size)))
    x0 = int(np.clip(cx - size / 2, 0, max(0, nw - size)))
    out_img = np.zeros((size, size, 3), np.uint8)
    out_mask = np.zeros((size, size), np.uint8)  # padding is background, as in letterboxing
    ch, cw = min(size, nh - y0), min(size, nw - x0)
    out_img[:ch, :cw] = image[y0 : y0 + ch, x0 : x0 + cw]
    out_mask[:ch, :cw] = mask[y0 : y0 + ch, x0 : x0 + cw]
    return out_img, out_mask


def object_view(
    image: np.ndarray,
    mask: np.ndarray,
    focus: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The box of `focus` (expanded and floored as OBJECT_VIEW_* say, its centre moved by
    up to a tenth of the box), clipped to the image, letterboxed to size x size: long side
    `size`, padding bottom/right background, as `predictor.letterbox` pads a crop. At the
    smallest expansion and the widest jitter a sliver of the target's edge may fall
    outside (serving's boxes always hold the previous mask): kept as augmentation."""
    ys, xs = np.nonzero(focus)
    h, w = mask.shape
    expansion = rng.uniform(*OBJECT_VIEW_EXPANSION)
    floor = rng.uniform(*OBJECT_VIEW_MIN_SIDE) * max(h, w)
    bh = max((ys.max() - ys.min() + 1) * expansion, floor)
    bw = max((xs.max() - xs.min() + 1) * expansion, floor)
    cy = (ys.min() + ys.max()) / 2 + rng.uniform(-0.1, 0.1) * bh
    cx = (xs.min() + xs.max()) / 2 + rng.uniform(-0.1, 0.1) * bw
    y0, y1 = max(0, int(cy - bh / 2)), min(h, int(np.ceil(cy + bh / 2)))
    x0, x1 = max(0, int(cx - bw / 2)), min(w, int(np.ceil(cx + bw / 2)))
    ch, cw = y1 - y0, x1 - x0
    scale = size / max(ch, cw)
    nh, nw = max(1, min(size, round(ch * scale))), max(1, min(size, round(cw * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out_img = np.zeros((size, size, 3), np.uint8)
    out_mask = np.zeros((size, size), np.uint8)
    out_img[:nh, :nw] = cv2.resize(image[y0:y1, x0:x1], (nw, nh), interpolation=interp)
    out_mask[:nh, :nw] = cv2.resize(mask[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_NEAREST)
    return out_img, out_mask
