"""The serving predictor: onnxruntime + numpy only (never imports torch).

Split as in segment-anything's predictor: `prepare` (decode-side work: letterbox the
image to the working size, done once per task and cacheable) apart from `predict`
(one network pass per click). SqueezeSAM fuses clicks early, so there is no image
embedding to reuse: every click is one full pass, which is why the pass is small (two
with the focus view, for a small object: `focus_view`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from squeezesam.models.clicks import Click, encode_prompt, object_roi
from squeezesam.models.guided_filter import refine_probability

CLASS_NAMES = ("person", "pet", "other")
DEFAULT_WORKING_SIZE = 512
STRIDE = 32  # the network downsamples 5 times; inputs are padded to a multiple of it

# Focus view (FocalClick, Chen et al. 2022): a small object is predicted once more on a
# crop around it and the clicks (expanded FOCUS_EXPANSION, at least FOCUS_MIN_CROP working
# pixels a side: at most 8x upscaling), letterboxed to the working size, the first pass's
# probability as previous mask; only where the crop gives at least FOCUS_MIN_GAIN times
# the pixels per object pixel (a large object gains nothing and costs a pass).
FOCUS_EXPANSION = 1.4
FOCUS_MIN_CROP = 64
FOCUS_MIN_GAIN = 2.0
# Zoom-in for corrective clicks (RITM, Sofiiuk et al. 2022, section 3.3): once a previous
# mask is known and there are two clicks or more, the pass sees the box of that mask and
# every click, expanded ZOOM_EXPANSION, at least ZOOM_MIN_CROP working pixels a side,
# letterboxed to the working size; outside the box the mask is background (the box holds
# the previous mask and every click by design). Cut from the working image, as cached for
# serving. The minimum side was chosen on the val splits (MODEL_CARD): smaller boxes
# upscale small COCO people too far (64 made coco_people_pets worse; 224 saved the most
# clicks over all val objects of 128, 160, 192, 224, 256).
ZOOM_EXPANSION = 1.4
ZOOM_MIN_CROP = 224

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL_PATH = WEIGHTS_DIR / "squeezesam_int8.onnx"


@dataclass
class PreparedImage:
    """An image letterboxed to the working size: what the Redis cache holds per task."""

    pixels: np.ndarray  # uint8 (Hp, Wp, 3) RGB, padded bottom/right to a multiple of STRIDE
    original_size: tuple[int, int]  # (H, W) of the original image
    scale: float  # working pixels per original pixel
    valid_size: tuple[int, int]  # (h, w) of the resized image inside the padding

    def to_working(self, click: Click) -> Click:
        return click.scaled(self.scale)


@dataclass
class Prediction:
    mask: np.ndarray  # bool (H, W) at the original resolution
    score: float  # predicted IoU of the mask, in [0, 1]
    label: str  # one of CLASS_NAMES
    class_probs: dict[str, float] = field(default_factory=dict)
    probability: np.ndarray | None = None  # float32 (h, w) at working resolution, unpadded


def letterbox(image: np.ndarray, working_size: int = DEFAULT_WORKING_SIZE) -> PreparedImage:
    """Resize so the long side is `working_size`, then pad to a multiple of STRIDE."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    scale = working_size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    ph, pw = -(-nh // STRIDE) * STRIDE, -(-nw // STRIDE) * STRIDE
    padded = np.zeros((ph, pw, 3), dtype=np.uint8)
    padded[:nh, :nw] = resized
    return PreparedImage(padded, (h, w), scale, (nh, nw))


def letterbox_mask(mask: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """An index mask (labels, not probabilities) laid out like `prepared.pixels`: nearest
    neighbour into the valid area, padding 0 (background)."""
    h, w = prepared.valid_size
    out = np.zeros(prepared.pixels.shape[:2], np.uint8)
    out[:h, :w] = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def classify(cls_logits: np.ndarray) -> tuple[str, dict[str, float]]:
    """Class logits -> (most likely class name, probability of each class)."""
    probs = _softmax(cls_logits)
    names = {n: float(p) for n, p in zip(CLASS_NAMES, probs, strict=True)}
    return CLASS_NAMES[int(np.argmax(probs))], names


def _mirror(a: np.ndarray, w: int) -> np.ndarray:
    """`a` with its first `w` columns mirrored left-right (the letterbox's valid area)."""
    out = a.copy()
    out[:, :w] = a[:, :w][:, ::-1]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def progressive_merge(prob: np.ndarray, prev: np.ndarray, click: Click) -> np.ndarray:
    """FocalClick's progressive merge (Chen et al. 2022): of what the new pass changed
    against the previous mask, keep only the connected change under the new click; the
    rest of the previous mask stands, so a corrective click cannot undo settled parts
    far from it. Both probabilities at working resolution; the click in its pixels."""
    new, old = prob > 0.5, prev > 0.5
    y = min(max(int(click.y), 0), prob.shape[0] - 1)
    x = min(max(int(click.x), 0), prob.shape[1] - 1)
    changed = new != old
    if not changed[y, x]:  # the pass did not follow the click: nothing local to merge
        return prob
    _, labels = cv2.connectedComponents(changed.astype(np.uint8), connectivity=8)
    return np.where(labels == labels[y, x], prob, prev).astype(np.float32)


class Predictor:
    """Image + clicks + previous mask -> mask at original resolution, score, class."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] = DEFAULT_MODEL_PATH,
        threads: int | None = None,
        working_size: int | None = None,
        flip: bool = False,
        focus: bool = False,
        merge_from: int = 0,
        zoom_in: bool = False,
        guided: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        # a click's mask edge moved onto the image's edges (models/guided_filter.py)
        self.guided = guided
        # corrective clicks on a crop around the object (ZOOM_*; measured in the model card)
        self.zoom_in = zoom_in
        # progressive merge from this many clicks on (0: off; measured in the model card)
        self.merge_from = merge_from
        # a second pass on the crop of a small object (FOCUS_*; measured in the model card)
        self.focus = focus
        # test-time flip averaging: two passes a prediction (measured in the model card)
        self.flip = flip
        if not self.model_path.is_file():
            raise FileNotFoundError(f"model file not found: {self.model_path}")
        options = ort.SessionOptions()
        # Default: all cores for one request (latency first). With several workers on
        # one machine, set threads=1 per worker: measured faster when cores are shared.
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the export leaves harmless unused constants
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(self.model_path), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.version: str = meta.get("model_version", self.model_path.stem)
        self.working_size = working_size or int(meta.get("working_size", DEFAULT_WORKING_SIZE))
        self.input_name = self.session.get_inputs()[0].name

    def prepare(self, image: np.ndarray) -> PreparedImage:
        return letterbox(image, self.working_size)

    def run_network(
        self,
        pixels: np.ndarray,
        clicks: list[Click],
        prev: np.ndarray | None,
        valid: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """One pass at working resolution: (mask logits HxW, predicted IoU, class logits).
        With `flip` (and `valid`, the letterboxed image's h, w) a second pass on the image
        mirrored left-right inside its valid area, averaged with the first."""
        x = encode_prompt(pixels, clicks, prev)[None]
        logits, iou, cls = self.session.run(None, {self.input_name: x})
        logits, iou, cls = logits[0, 0], float(iou.reshape(-1)[0]), cls.reshape(-1)
        if self.flip and valid is not None:
            h, w = valid
            mirrored = [Click(c.y, w - 1 - c.x, c.positive) for c in clicks]
            x = encode_prompt(_mirror(pixels, w), mirrored,
                              None if prev is None else _mirror(prev, w))[None]  # fmt: skip
            m_logits, m_iou, m_cls = self.session.run(None, {self.input_name: x})
            logits = (logits + _mirror(m_logits[0, 0], w)) / 2
            iou, cls = (iou + float(m_iou.reshape(-1)[0])) / 2, (cls + m_cls.reshape(-1)) / 2
        return logits, float(np.clip(iou, 0.0, 1.0)), cls

    def predict(
        self,
        prepared: PreparedImage,
        clicks: list[Click],
        prev_mask: np.ndarray | None = None,
        threshold: float = 0.5,
    ) -> Prediction:
        """Clicks are in original-image pixels; `prev_mask` (optional) at original size."""
        ph, pw = prepared.pixels.shape[:2]
        h, w = prepared.valid_size
        prev = None
        if prev_mask is not None:
            prev = np.zeros((ph, pw), dtype=np.float32)
            prev[:h, :w] = cv2.resize(
                prev_mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR
            )
        working_clicks = [prepared.to_working(c) for c in clicks]
        if self.zoom_in and prev is not None and len(clicks) > 1:
            prob, score, cls = self.zoom_view(prepared, working_clicks, prev[:h, :w])
        else:
            logits, score, cls = self.run_network(
                prepared.pixels, working_clicks, prev, prepared.valid_size
            )
            prob = _sigmoid(logits[:h, :w])
            if self.focus:
                prob, score, cls = self.focus_view(prepared, working_clicks, prob, score, cls)
        if self.merge_from and prev is not None and len(clicks) >= self.merge_from:
            prob = progressive_merge(prob, prev[:h, :w], working_clicks[-1])
        if self.guided:
            prob = refine_probability(prepared.pixels[:h, :w], prob)
        oh, ow = prepared.original_size
        full = cv2.resize(prob, (ow, oh), interpolation=cv2.INTER_LINEAR)
        label, class_probs = classify(cls)
        return Prediction(full > threshold, score, label, class_probs, prob)

    def focus_view(
        self,
        prepared: PreparedImage,
        clicks: list[Click],
        prob: np.ndarray,
        score: float,
        cls: np.ndarray,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """The focus pass (FOCUS_*) on the working image: (probability at working
        resolution, score, class logits), the first pass's own where it does not apply."""
        h, w = prepared.valid_size
        if not (prob > 0.5).any():
            return prob, score, cls
        roi = object_roi(prob, clicks, (h, w), FOCUS_EXPANSION, FOCUS_MIN_CROP)
        y0, y1, x0, x1 = roi
        if FOCUS_MIN_GAIN * max(y1 - y0, x1 - x0) > max(h, w):
            return prob, score, cls
        _, _, crop_prob, score, cls = self.crop_pass(prepared.pixels, roi, clicks, prob)
        return paste(crop_prob, roi, (h, w)), score, cls

    def zoom_view(
        self, prepared: PreparedImage, clicks: list[Click], prev: np.ndarray
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """The zoom-in pass (ZOOM_*): `prev` and the result are probabilities on the
        working image's valid area; the focus view still applies inside the crop."""
        h, w = prepared.valid_size
        roi = object_roi(prev, clicks, (h, w), ZOOM_EXPANSION, ZOOM_MIN_CROP)
        crop, shifted, prob, score, cls = self.crop_pass(prepared.pixels, roi, clicks, prev)
        if self.focus:
            prob, score, cls = self.focus_view(crop, shifted, prob, score, cls)
        return paste(prob, roi, (h, w)), score, cls

    def crop_pass(
        self,
        pixels: np.ndarray,
        roi: tuple[int, int, int, int],
        clicks: list[Click],
        prev: np.ndarray,
    ) -> tuple[PreparedImage, list[Click], np.ndarray, float, np.ndarray]:
        """One pass on `pixels[roi]` letterboxed to the working size, with the clicks moved
        onto it and `prev` (same frame as `pixels`) cropped and resized likewise, padding
        0: (the crop, its clicks, its probability on the crop's valid area, score, class
        logits)."""
        y0, y1, x0, x1 = roi
        crop = letterbox(np.ascontiguousarray(pixels[y0:y1, x0:x1]), self.working_size)
        ch, cw = crop.valid_size
        shifted = [Click(c.y - y0, c.x - x0, c.positive).scaled(crop.scale) for c in clicks]
        crop_prev = np.zeros(crop.pixels.shape[:2], np.float32)
        crop_prev[:ch, :cw] = cv2.resize(
            prev[y0:y1, x0:x1], (cw, ch), interpolation=cv2.INTER_LINEAR
        )
        logits, score, cls = self.run_network(crop.pixels, shifted, crop_prev, crop.valid_size)
        return crop, shifted, _sigmoid(logits[:ch, :cw]), score, cls


def paste(prob: np.ndarray, roi: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """A crop's probability back into the box `roi` of a zero map of `shape`."""
    y0, y1, x0, x1 = roi
    out = np.zeros(shape, np.float32)
    out[y0:y1, x0:x1] = cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    return out
