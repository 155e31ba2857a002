"""What `squeezesam eval` clicks through: the ONNX model through the serving predictor
(with its options: focus view, zoom-in, flip, merge) and OpenCV GrabCut seeded by the same
clicks (the baseline)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from squeezesam.models.clicks import Click
from squeezesam.models.predictor import Predictor, PreparedImage


class Segmenter(Protocol):
    name: str

    def prepare(self, image: np.ndarray) -> object: ...

    def segment(
        self, state: object, clicks: list[Click], prev: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """-> (bool mask at original size, probability for feedback, label)."""
        ...


class OnnxSegmenter:
    def __init__(
        self,
        model_path: Path,
        threads: int | None = None,
        saliency_size: int | None = None,
        feed_previous_mask: bool = True,
        zoom_in: bool = False,
        flip: bool = False,
        working_size: int | None = None,
        focus: bool = False,
        merge_from: int = 0,
        guided: bool = False,
    ) -> None:
        self.predictor = Predictor(
            model_path,
            threads=threads or None,
            working_size=working_size,
            flip=flip,
            focus=focus,
            merge_from=merge_from,
            zoom_in=zoom_in,
            guided=guided,
        )
        suffix = ("+zoom" if zoom_in else "") + ("+flip" if flip else "")
        suffix += "+focus" if focus else ""
        suffix += f"+merge{merge_from}" if merge_from else ""
        suffix += "+guided" if guided else ""
        if working_size:
            suffix += f"@{working_size}"
        self.name = self.predictor.version + suffix
        self.saliency_size = saliency_size
        self.feed_previous_mask = feed_previous_mask

    def prepare(self, image: np.ndarray) -> PreparedImage:
        return self.predictor.prepare(image)

    def segment(self, state: PreparedImage, clicks, prev):
        prev = prev if self.feed_previous_mask else None
        p = self.predictor.predict(state, clicks, prev)
        h, w = state.original_size
        prob = cv2.resize(p.probability, (w, h), interpolation=cv2.INTER_LINEAR)
        return p.mask, prob, p.label


class GrabCutSegmenter:
    """OpenCV GrabCut driven by the same clicks: click disks are hard constraints, a
    neighbourhood of the positive clicks is 'probably foreground', the rest 'probably
    background'. Runs at long side 256 for speed (5 iterations)."""

    name = "grabcut"
    work = 256

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
        scale = self.work / max(image.shape[:2])
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2BGR), scale, image.shape[:2]

    def segment(self, state, clicks, prev):
        bgr, scale, (H, W) = state
        h, w = bgr.shape[:2]
        if prev is not None:
            prev_small = cv2.resize(prev.astype(np.float32), (w, h)) > 0.5
            mask = np.where(prev_small, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        else:
            mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
            for c in clicks:
                if c.positive:
                    cv2.circle(
                        mask,
                        (int(c.x * scale), int(c.y * scale)),
                        int(0.2 * max(h, w)),
                        cv2.GC_PR_FGD,
                        -1,
                    )
        for c in clicks:
            value = cv2.GC_FGD if c.positive else cv2.GC_BGD
            cv2.circle(mask, (int(c.x * scale), int(c.y * scale)), 4, value, -1)
        bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
        try:
            cv2.grabCut(bgr, mask, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate (e.g. no background sample): keep the seeds
            pass
        small = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        full = cv2.resize(small, (W, H), interpolation=cv2.INTER_NEAREST) > 0
        return full, full.astype(np.float32), "other"
