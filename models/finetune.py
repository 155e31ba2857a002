"""Fine-tuning on a project's accepted labels, and the evaluation gate for promotion.

`finetune` continues from the current weights with the same examples (click
simulation, whole-object augmentations) and the same step as base training
(`train.train_step`), mixing in base-data replay so a project cannot make the model
forget people and pets in general. `gate` compares candidate and current model with
the NoC protocol on the project's held-out split and on a fixed guard set of the
base data, and promotes only if the candidate is better on the first and not worse
than a tolerance on the second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from squeezesam.models.augment import ROLLOUT_P, ExampleMaker, Loaded
from squeezesam.models.data import Sample, discover_sets, load_samples, load_set
from squeezesam.models.evaluate import evaluate_samples, object_nocs, summarise
from squeezesam.models.export import export_checkpoint
from squeezesam.models.segmenters import OnnxSegmenter
from squeezesam.models.stats import paired_difference
from squeezesam.models.train import (
    cosine_lr,
    draw_batch,
    load_checkpoint,
    rollout,
    save_checkpoint,
    train_step,
)

log = logging.getLogger("squeezesam.finetune")
GUARD_PER_SET = 8
GUARD_TOLERANCE = 0.01  # guard 1-click mIoU may drop by at most 1 point


class MixedMaker:
    """Project examples, with a share of base-data examples replayed."""

    def __init__(self, project: ExampleMaker, replay: ExampleMaker | None, fraction: float):
        self.project, self.replay, self.fraction = project, replay, fraction
        self.loaded = project.loaded

    def sample_index(self, rng: np.random.Generator) -> int:
        return self.project.sample_index(rng)

    def make(self, index: int, rng: np.random.Generator):
        if self.replay is not None and rng.random() < self.fraction:
            return self.replay.make(int(rng.integers(len(self.replay.loaded))), rng)
        return self.project.make(index % len(self.project.loaded), rng)


@dataclass
class FinetuneResult:
    checkpoint: Path
    int8: Path
    version: str
    steps: int
    seconds: float
    train_images: int


def finetune(
    project_data: Path,
    base_checkpoint: Path,
    out_dir: Path,
    steps: int = 300,
    batch: int = 8,
    size: int = 256,
    lr: float = 2e-4,
    replay_data: Path | None = None,
    replay_fraction: float = 0.3,
    seed: int = 0,
    threads: int = 2,
    version: str | None = None,
    calibration_count: int = 12,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    rollout_p: float = ROLLOUT_P,
) -> FinetuneResult:
    """Fine-tune on the *train* split of `project_data`; its val split stays held out."""
    t0 = time.time()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    samples = load_samples(project_data, "train")
    if not samples:
        raise ValueError(f"no training images in {project_data}")
    project = ExampleMaker([Loaded.from_sample(s) for s in samples], size, zero_click_p=0.2)
    replay = None
    if replay_data is not None and replay_fraction > 0:
        base = load_samples(replay_data, "train")
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(base), size=min(400, len(base)), replace=False)
        replay = ExampleMaker([Loaded.from_sample(base[int(i)]) for i in picks], size)
    maker = MixedMaker(project, replay, replay_fraction)
    model, base_step, meta = load_checkpoint(base_checkpoint)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for step in range(steps):
        rng = np.random.default_rng([seed, 1_000_000 + step])
        examples = draw_batch(maker, rng, batch)
        rollout(model, examples, rng, rollout_p)  # as base training does
        losses = train_step(model, opt, examples, cosine_lr(lr, step, steps, 0, 20))
        if on_step:
            on_step(step + 1, losses)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "candidate_fp16.pt"
    meta = dict(meta, finetuned_from=str(base_checkpoint), finetune_steps=steps)
    save_checkpoint(model, base_step + steps, checkpoint, meta)
    _, int8, version = export_checkpoint(
        checkpoint, out_dir, replay_data or project_data, version, calibration_count
    )
    seconds = time.time() - t0
    log.info(
        "fine-tuned %d steps on %d images in %.0f s -> %s", steps, len(samples), seconds, version
    )
    return FinetuneResult(checkpoint, int8, version, steps, seconds, len(samples))


def guard_samples(data_root: Path, per_set: int = GUARD_PER_SET) -> list[Sample]:
    """A fixed guard set: the first val images (by id) of every base set with people or pets."""
    out: list[Sample] = []
    for folder in discover_sets(data_root):
        val = [s for s in load_set(folder) if s.split == "val"]
        val = [s for s in val if any(o.label in ("person", "pet") for o in s.objects)]
        out += sorted(val, key=lambda s: s.image_id)[:per_set]
    return out


@dataclass
class GateDecision:
    promote: bool
    reason: str
    candidate: dict = field(default_factory=dict)
    current: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _score(
    model: Path, samples: list[Sample], max_clicks: int, name: str
) -> tuple[dict, list[int], list[int]]:
    """-> (figures, NoC@90 of each object, image of each object): the last two pair runs."""
    seg = OnnxSegmenter(model, threads=None)
    res = evaluate_samples(seg, samples, max_clicks, desc=name)
    nocs = object_nocs(res.ious, max_clicks)
    return summarise(res, max_clicks, seg.name, name, "val"), nocs, res.image_of


def gate(
    candidate: Path,
    current: Path,
    heldout: list[Sample],
    guard: list[Sample],
    max_clicks: int = 10,
    tolerance: float = GUARD_TOLERANCE,
) -> GateDecision:
    """Promote iff held-out NoC@90 is lower (ties: higher 1-click mIoU) and the guard
    set's 1-click mIoU is not lower than the current model's by more than `tolerance`."""
    if not heldout:
        return GateDecision(False, "no held-out labels to evaluate on")
    ch, cand_nocs, images = _score(candidate, heldout, max_clicks, "heldout")
    uh, cur_nocs, _ = _score(current, heldout, max_clicks, "heldout")
    # Recorded, not (yet) a rule: how sure the held-out split is of the NoC@90 change.
    # Small projects hold few held-out images; a rule requiring a clear verdict would
    # rarely promote there (see MODEL_CARD, Evaluation).
    if cand_nocs:
        ch["noc90_paired"] = paired_difference(cur_nocs, cand_nocs, images)
    cand, cur = {"heldout": ch}, {"heldout": uh}
    if guard:
        cand["guard"] = _score(candidate, guard, max_clicks, "guard")[0]
        cur["guard"] = _score(current, guard, max_clicks, "guard")[0]
    better = ch["noc90"] < uh["noc90"] or (
        ch["noc90"] == uh["noc90"] and ch["miou_1click"] > uh["miou_1click"]
    )
    if not better:
        reason = (
            f"held-out not better: NoC@90 {ch['noc90']} vs {uh['noc90']}, "
            f"1-click mIoU {ch['miou_1click']} vs {uh['miou_1click']}"
        )
        return GateDecision(False, reason, cand, cur)
    if guard:
        drop = cur["guard"]["miou_1click"] - cand["guard"]["miou_1click"]
        if drop > tolerance:
            reason = f"guard set 1-click mIoU dropped by {drop:.4f} (> {tolerance})"
            return GateDecision(False, reason, cand, cur)
    reason = f"held-out NoC@90 {uh['noc90']} -> {ch['noc90']}, guard within tolerance"
    if "noc90_paired" in ch:
        paired = ch["noc90_paired"]
        low, high = paired["diff_ci95"]
        reason += f" (paired {paired['diff']:+} [{low}, {high}]: {paired['verdict']})"
    return GateDecision(True, reason, cand, cur)
