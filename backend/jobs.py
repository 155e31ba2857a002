"""What the queues run: one click (`segment_click`) and one whole task (`preannotate_task`).

Jobs take plain picklable specs built by the web process and return an `Outcome`
envelope: either the JSON text of one `/predict` result item (encoded here, in the
worker, so the web process only splices text together) or an error with its HTTP
status. User errors (bad image, bad prompt) are returned, not raised: rq would retry
an exception, and retrying a corrupt image helps nobody. Anything raised is a crash
and is retried (rq Retry), like a worker that died.

Early reply: a job also writes its Outcome to its own reply stream (`reply_key`) the
moment it has one, before rq's success bookkeeping (registries, execution records,
result stream) which costs the waiting web process ~1.2 ms per click on this machine
(measured, benchmarks/click_latency.py). The web process reads the reply stream and
rq's result stream together (dispatch.py); rq's records are still written as usual.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from rq import get_current_job

from squeezesam.backend import cloud_storage, results_cache
from squeezesam.backend.images import ImageError, decode, resolve
from squeezesam.backend.labelstudio import (
    BrushRegion,
    PayloadError,
    ProjectConfig,
    Prompt,
    brush_result,
    choose_label,
    object_label,
    prediction,
    prompt_clicks,
)
from squeezesam.backend.masks import clean_mask, clip_to_box, decode_brush_rle
from squeezesam.models.clicks import Click
from squeezesam.models.objects import find_objects
from squeezesam.models.predictor import Prediction, Predictor, PreparedImage

if TYPE_CHECKING:
    from squeezesam.backend.worker import Runtime

REPLY_TTL = 60  # seconds a reply waits for its reader (the job's result_ttl)


@dataclass(frozen=True)
class Outcome:
    status: int  # 200, or the HTTP status of the error
    body: str = ""  # JSON text of one result item when status == 200
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Outcome:
        text = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(int(text["status"]), text.get("body", ""), text.get("error", ""))


def reply_key(job_id: str) -> str:
    return f"squeezesam:reply:{job_id}"


def reply_early(outcome: Outcome) -> Outcome:
    """Hand `outcome` to whoever waits on this job now (see the module docstring)."""
    job = get_current_job()
    if job is not None:
        key = reply_key(job.id)
        with job.connection.pipeline(transaction=False) as pipe:
            pipe.xadd(key, outcome.to_fields(), maxlen=1)
            pipe.expire(key, REPLY_TTL)
            pipe.execute()
    return outcome


def ping(_spec: object = None) -> Outcome:
    """A job that does nothing: its round trip (enqueue -> worker -> reply) is the queue's
    own cost, which `benchmarks/click_latency.py` reports as part of the floor."""
    return reply_early(Outcome(200, "{}"))


@dataclass(frozen=True)
class SegmentJob:
    image_ref: str
    prompt: Prompt
    config: ProjectConfig
    regions: tuple[BrushRegion, ...] = ()  # brush regions already on the task


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
        try:
            image = decode(rt.fetcher.fetch(ref), rt.settings.image_max_pixels)
        except ImageError as exc:  # a presign path: the message names the cloud URI
            raise cloud_storage.explain(exc, ref) from None
        prepared = rt.predictor.prepare(image)
        rt.cache.put(key, prepared)
    return prepared


def segment(
    predictor: Predictor,
    prepared: PreparedImage,
    prompt: Prompt,
    prev_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Prediction]:
    """Prompt -> model -> mask clipped to the box (if any) and cleaned, original size."""
    height, width = prepared.original_size
    clicks, box = prompt_clicks(prompt, height, width)
    return segment_clicks(predictor, prepared, clicks, box, prev_mask)


def segment_clicks(
    predictor: Predictor,
    prepared: PreparedImage,
    clicks: list[Click],
    box: tuple[float, float, float, float] | None,
    prev_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, Prediction]:
    """`segment` from clicks already in pixels (the click path converts them once)."""
    predicted = predictor.predict(prepared, clicks, prev_mask=prev_mask)
    mask = predicted.mask if box is None else clip_to_box(predicted.mask, box)
    keep = [(int(c.y), int(c.x)) for c in clicks if c.positive]
    return clean_mask(mask, keep=keep), predicted


def segment_click(job: SegmentJob) -> Outcome:
    """One click: cached image -> `segment` -> brushlabels result (the interactive path)."""
    rt = _runtime()
    predictor = rt.predictor  # once: a model swap mid-job must not mix two versions
    try:
        prepared = load_image(rt, job.image_ref)
        clicks, box = prompt_clicks(job.prompt, *prepared.original_size)  # once per click
        prev, region_label = region_under_click(job.regions, clicks, prepared)
        mask, predicted = segment_clicks(predictor, prepared, clicks, box, prev_mask=prev)
        label = choose_label(region_label or job.prompt.label, predicted.label, job.config)
        results = [brush_result(mask, label, predicted.score, job.config)] if mask.any() else []
        item = prediction(results, predicted.score, predictor.version)
        return reply_early(Outcome(200, json.dumps(item, separators=(",", ":"))))
    except (ImageError, PayloadError) as exc:
        return reply_early(Outcome(exc.status, error=str(exc)))


def region_under_click(
    regions: tuple[BrushRegion, ...], clicks: list[Click], prepared: PreparedImage
) -> tuple[np.ndarray | None, str | None]:
    """(mask, label) of the first region holding the first positive click, else (None, None).

    A click on a pre-annotated object refines that object: its mask becomes the
    network's previous mask and its label is kept, so the first click does not throw a
    good pre-annotation away. A click outside every region starts a new object.
    """
    height, width = prepared.original_size
    first = next((c for c in clicks if c.positive), None)
    if first is None or not regions:
        return None, None
    for region in regions:
        # the region's pixel grid may differ from ours (another decoder's EXIF handling)
        ry = min(int(first.y * region.height / height), region.height - 1)
        rx = min(int(first.x * region.width / width), region.width - 1)
        try:  # bounded: an RLE claiming more than its size is refused before allocating
            mask = decode_brush_rle(list(region.rle), region.width, region.height) > 0
        except ValueError:  # an RLE that does not match its size: not a usable mask
            continue
        if not mask[ry, rx]:
            continue
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.uint8), (width, height), cv2.INTER_NEAREST) > 0
        return mask, region.label
    return None, None


def preannotate(rt: Runtime, image_ref: str, config: ProjectConfig) -> Outcome:
    """One task, zero clicks: the cached answer, or find objects, label, encode, cache.

    The finished item (JSON text) is cached by (image, model version, config), so a task
    pre-annotated in the background answers at once when an annotator opens it.
    """
    predictor = rt.predictor  # once: a model swap mid-job must not mix two versions
    key = results_cache.key(image_ref, predictor.version, config)
    cached = results_cache.get(rt.cache.redis, key)
    if cached is not None:
        return Outcome(200, cached)
    try:
        prepared = load_image(rt, image_ref)
    except (ImageError, PayloadError) as exc:
        return Outcome(exc.status, error=str(exc))
    results, scores = [], []
    for found in find_objects(predictor, prepared):
        labelled = object_label(found.label, found.class_probs, found.score, config)
        if labelled is None:
            continue  # an `other` object the config has no label for
        keep = [(int(c.y), int(c.x)) for c in found.clicks if c.positive]
        cleaned = clean_mask(found.mask, keep=keep)
        if cleaned.any():
            label, score = labelled
            results.append(brush_result(cleaned, label, score, config))
            scores.append(score)
    # the task's score: its weakest region, so a task with one doubtful region sorts low
    score = float(min(scores)) if scores else 0.0
    text = json.dumps(prediction(results, score, predictor.version), separators=(",", ":"))
    results_cache.put(rt.cache.redis, key, text, rt.settings.preannotate_cache_ttl)
    return Outcome(200, text)


def preannotate_task(job: TaskJob) -> Outcome:
    """One task of a bulk `/predict` (see `preannotate`)."""
    return reply_early(preannotate(_runtime(), job.image_ref, job.config))


def _runtime() -> Runtime:
    """The worker's runtime, imported where a job runs: the web process imports this
    module for the job specs and the Outcome, and never loads the worker."""
    from squeezesam.backend.worker import runtime

    return runtime()
