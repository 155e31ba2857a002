"""What the queues run: one click (`segment_click`) and one whole task (`preannotate_task`).

Jobs take plain picklable specs built by the web process and return an `Outcome`
envelope: either the JSON text of one `/predict` result item (encoded here, in the
worker, so the web process only splices text together) or an error with its HTTP
status. User errors (bad image, bad prompt) are returned, not raised: rq would retry
an exception, and retrying a corrupt image helps nobody. Anything raised is a crash
and is retried (rq Retry), like a worker that died.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from squeezesam.models.predictor import Prediction, Predictor, PreparedImage

from .images import ImageError, decode, resolve
from .labelstudio import (
    ClickPrompt,
    PayloadError,
    ProjectConfig,
    brush_result,
    choose_label,
    prediction,
    prompt_clicks,
)
from .masks import clean_mask, clip_to_box
from .worker import Runtime, runtime


@dataclass(frozen=True)
class Outcome:
    status: int  # 200, or the HTTP status of the error
    body: str = ""  # JSON text of one result item when status == 200
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class ClickJob:
    image_ref: str
    prompt: ClickPrompt
    config: ProjectConfig


@dataclass(frozen=True)
class TaskJob:
    image_ref: str
    config: ProjectConfig


def load_image(rt: Runtime, ref: str) -> PreparedImage:
    """Cached letterboxed image, or fetch + decode + letterbox once and cache it."""
    url, _ = resolve(ref, rt.settings)
    key = rt.cache.key(url, rt.predictor.working_size)
    prepared = rt.cache.get(key)
    if prepared is None:
        image = decode(rt.fetcher.fetch(ref), rt.settings.image_max_pixels)
        prepared = rt.predictor.prepare(image)
        rt.cache.put(key, prepared)
    return prepared


def segment(
    predictor: Predictor, prepared: PreparedImage, prompt: ClickPrompt
) -> tuple[np.ndarray, Prediction]:
    """Prompt -> model -> mask clipped to the box (if any) and cleaned, original size."""
    height, width = prepared.original_size
    clicks, box = prompt_clicks(prompt, height, width)
    predicted = predictor.predict(prepared, clicks)
    mask = predicted.mask if box is None else clip_to_box(predicted.mask, box)
    keep = [(int(c.y), int(c.x)) for c in clicks if c.positive]
    return clean_mask(mask, keep=keep), predicted


def segment_click(job: ClickJob) -> Outcome:
    """One click: cached image -> `segment` -> brushlabels result (the interactive path)."""
    rt = runtime()
    try:
        prepared = load_image(rt, job.image_ref)
        mask, predicted = segment(rt.predictor, prepared, job.prompt)
        label = choose_label(job.prompt.label, predicted.label, job.config)
        results = [brush_result(mask, label, predicted.score, job.config)] if mask.any() else []
        item = prediction(results, predicted.score, rt.predictor.version)
        return Outcome(200, json.dumps(item, separators=(",", ":")))
    except (ImageError, PayloadError) as exc:
        return Outcome(exc.status, error=str(exc))


def find_objects(
    predictor: Predictor, prepared: PreparedImage
) -> list[tuple[np.ndarray, Prediction]]:
    """Zero-click pre-annotation: whole objects as (mask, Prediction). Not yet: none.

    The later issue replaces this body (saliency -> components -> clicks -> objects);
    `preannotate_task` already turns whatever it returns into brush results.
    """
    return []


def preannotate_task(job: TaskJob) -> Outcome:
    """One task of a bulk `/predict`: fetch (and so cache) its image, find objects."""
    rt = runtime()
    try:
        prepared = load_image(rt, job.image_ref)
        results, scores = [], []
        for mask, predicted in find_objects(rt.predictor, prepared):
            cleaned = clean_mask(mask)
            if cleaned.any():
                label = choose_label(None, predicted.label, job.config)
                results.append(brush_result(cleaned, label, predicted.score, job.config))
                scores.append(predicted.score)
        score = float(np.mean(scores)) if scores else 0.0
        item = prediction(results, score, rt.predictor.version)
        return Outcome(200, json.dumps(item, separators=(",", ":")))
    except (ImageError, PayloadError) as exc:
        return Outcome(exc.status, error=str(exc))
