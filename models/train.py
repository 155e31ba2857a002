"""Base training on CPU (`squeezesam train-base`): resumable, seeded, logged.

The committed checkpoint (`models/weights/squeezesam_fp16.pt`: fp16 weights and the
step reached, no optimizer state) is both what resuming needs and what export reads.
AdamW restarts fresh on resume, with a short warmup; the cosine schedule continues
from the stored step.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from squeezesam.models.augment import CROWD_P, INTERIOR_CLICK_P, ROLLOUT_P, ExampleMaker, Loaded
from squeezesam.models.clicks import encode_prompt, first_click, iou, next_click
from squeezesam.models.crops import MAX_SCALE, OBJECT_VIEW_P
from squeezesam.models.data import Sample, default_data_root, load_samples
from squeezesam.models.deepen import deepen
from squeezesam.models.network import ENCODER_REPEATS, SqueezeSAM, build_model
from squeezesam.models.predictor import WEIGHTS_DIR, letterbox, letterbox_mask

CHECKPOINT = WEIGHTS_DIR / "squeezesam_fp16.pt"
# Class CE weight (base training and fine-tuning share train_step). 0.2 up to s20700,
# whose COCO labels slipped (label_accuracy coco128 0.84 -> 0.80); runs from s20700 at
# 0.5 got them back (0.84-0.87, MODEL_CARD) while the mask loss still dominates.
CLASS_LOSS_WEIGHT = 0.5
# Pixels of the training size (384-512) around a rollout's last click that --click-weight
# weighs up: about the size of the error regions Berkeley's late clicks land in.
CLICK_WEIGHT_RADIUS = 16
# --mask-loss nfl: the focal exponent of the normalised focal loss (f-BRS / RITM use 2).
FOCAL_GAMMA = 2.0
log = logging.getLogger("squeezesam.train")


@dataclass
class TrainConfig:
    data: Path
    checkpoint: Path = CHECKPOINT
    steps: int = 2000  # steps to run in this invocation
    total_steps: int = 30000  # length of the cosine schedule across all resumed runs
    batch: int = 8
    size: int = 256
    max_scale: float = MAX_SCALE  # long side of a rescaled image up to max_scale * size
    lr: float = 6e-4
    seed: int = 0
    val_every: int = 300
    save_every: int = 100
    val_per_set: int = 16
    threads: int = 2
    log_file: Path | None = None
    rollout_p: float = ROLLOUT_P  # share of click examples trained on rollouts
    crowd_p: float = CROWD_P  # share of examples made crowd scenes (augment.py)
    crowd_clicks: bool = True  # False: crowds in zero-click examples only
    object_view_p: float = OBJECT_VIEW_P  # share of click examples cropped as object views
    interior_click_p: float = INTERIOR_CLICK_P  # share of first clicks at the interior point
    rollout_iters: int = 3  # a rollout adds 1..rollout_iters clicks (RITM: 3)
    click_weight: float = 0.0  # extra mask-loss weight around a rollout's last click
    refine_head: bool = False  # add the stride-2 RefineHead if the checkpoint has none
    freeze_base: bool = False  # train the RefineHead alone; the rest stays as it is
    mask_loss: str = "bce"  # "bce": BCE + Dice; "nfl": normalised focal + Dice (FOCAL_GAMMA)
    deepen: bool = False  # grow a Lite0 checkpoint's encoder to Lite1 (models/deepen.py)
    schedule_start: int = 0  # the step where the cosine schedule begins (a warm restart)


def save_checkpoint(model: SqueezeSAM, step: int, path: Path, extra: dict | None = None) -> None:
    """fp16 weights + step; written to a temp file then renamed (never half-written)."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "step": step, "meta": extra or {}}, tmp)
    tmp.replace(path)


def encoder_of(state: dict[str, torch.Tensor]) -> str:
    """The encoder variant a state dict was saved from, by its number of blocks."""
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("encoder._blocks.")}
    for variant, repeats in ENCODER_REPEATS.items():
        if len(blocks) == sum(repeats):
            return variant
    raise RuntimeError(f"checkpoint has {len(blocks)} encoder blocks: no known encoder")


def load_checkpoint(path: Path, refine: bool = False) -> tuple[SqueezeSAM, int, dict]:
    """The network as saved; with `refine`, a checkpoint without the stride-2 RefineHead
    gets a new one (zero residual: the same predictions until trained)."""
    blob = torch.load(path, map_location="cpu")
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    has_refine = any(k.startswith("refine.") for k in state)
    model = build_model(pretrained=False, refine=refine or has_refine, encoder=encoder_of(state))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(has_refine or not k.startswith("refine.") for k in missing):
        raise RuntimeError(
            f"{path}: checkpoint mismatch: missing={missing}, unexpected={unexpected}"
        )
    return model, int(blob.get("step", 0)), dict(blob.get("meta", {}))


def mask_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, focal: bool = False
) -> torch.Tensor:
    """BCE + Dice, void pixels (weight 0) ignored. With `focal`, the cross-entropy term is
    the normalised focal loss (Sofiiuk et al., f-BRS, CVPR 2020): each pixel's BCE times
    |target - p|^FOCAL_GAMMA, rescaled per example so the weights sum to the pixel count:
    the loss moves onto the pixels still wrong (edges, thin parts) at the same scale."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pixel_weight = weight
    if focal:
        with torch.no_grad():  # the focus weights steer the gradient; they take none
            hard = (target - torch.sigmoid(logits)).abs() ** FOCAL_GAMMA * weight
            total = weight.sum((1, 2, 3), keepdim=True)
            pixel_weight = hard * total / hard.sum((1, 2, 3), keepdim=True).clamp(min=1e-6)
    bce = (bce * pixel_weight).sum() / weight.sum().clamp(min=1.0)
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (prob * t).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + t.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def val_subset(samples: list[Sample], per_set: int) -> list[Sample]:
    by_set: dict[str, list[Sample]] = {}
    for s in samples:
        by_set.setdefault(s.set_name, []).append(s)
    return [
        s for group in by_set.values() for s in sorted(group, key=lambda s: s.image_id)[:per_set]
    ]


@torch.no_grad()
def quick_validate(model: SqueezeSAM, samples: list[Sample]) -> dict[str, float]:
    """1-click IoU (click at the object's centre) and zero-click IoU of salient objects,
    at the serving resolution: a fast training-time signal, not the evaluation protocol."""
    model.eval()
    one, zero, per_set = [], [], {}
    for s in samples:
        loaded = Loaded.from_sample(s)
        prep = letterbox(loaded.image)
        mask_small = letterbox_mask(loaded.mask, prep)
        void = mask_small == 255
        keys = sorted(loaded.labels, key=lambda k: -loaded.areas[k])[:2]
        for k in keys:
            gt = mask_small == k
            c = first_click(gt)
            if c is None:
                continue
            x = torch.from_numpy(encode_prompt(prep.pixels, [c], None))[None]
            pred = model(x)[0][0, 0].numpy() > 0
            v = iou(pred, gt, void)
            one.append(v)
            per_set.setdefault(s.set_name, []).append(v)
        sal = np.isin(mask_small, loaded.salient())
        if sal.any():
            x = torch.from_numpy(encode_prompt(prep.pixels, [], None))[None]
            zero.append(iou(model(x)[0][0, 0].numpy() > 0, sal, void))
    model.train()
    out = {"val_1click": float(np.mean(one)), "val_0click": float(np.mean(zero)) if zero else 0.0}
    out.update({f"val_1click_{k}": float(np.mean(v)) for k, v in sorted(per_set.items())})
    return out


def draw_batch(maker: ExampleMaker, rng: np.random.Generator, batch: int) -> list:
    examples: list = []
    while len(examples) < batch:
        ex = maker.make(maker.sample_index(rng), rng)
        if ex is not None:
            examples.append(ex)
    return examples


@torch.no_grad()
def rollout(
    model: SqueezeSAM,
    examples: list,
    rng: np.random.Generator,
    p: float,
    max_iters: int = 3,
    click_weight: float = 0.0,
) -> int:
    """RITM's iterative training (Sofiiuk et al. 2022, section 3.2): for a share `p` of the
    click examples, drop the synthetic later clicks and previous mask, run the network
    1..`max_iters` times without gradients from the first click, each time adding the
    clicker's next click on the network's own errors and feeding its binary mask back,
    exactly as evaluation and serving do. Teaches corrective clicks on the errors this
    network makes rather than on perturbed ground truth. Over-merge corrections
    (`Example.keep_clicks`) keep their synthetic clicks. With `click_weight`, the mask
    loss weighs the pixels within CLICK_WEIGHT_RADIUS of the last click (1 + click_weight)
    times: late corrective clicks that leave the mask unchanged near them (Berkeley's
    plateaus, MODEL_CARD) then cost more. Returns examples rolled out."""
    chosen = [
        e for e in examples
        if not e.zero_click and not e.keep_clicks and e.image is not None
        and e.first is not None and rng.random() < p
    ]  # fmt: skip
    if not chosen:
        return 0
    iters = int(rng.integers(1, max_iters + 1))
    clicks = [[e.first] for e in chosen]
    prev: list[np.ndarray | None] = [None] * len(chosen)
    was_training = model.training
    model.eval()  # running BatchNorm statistics, as at serving; no statistics updated
    for _ in range(iters):
        triples = zip(chosen, clicks, prev, strict=True)
        x = np.stack([encode_prompt(e.image, c, m) for e, c, m in triples])
        pred = model(torch.from_numpy(x))[0][:, 0].numpy() > 0
        for i, e in enumerate(chosen):
            c = next_click(pred[i], e.target > 0.5, e.weight < 0.5)
            if c is not None:
                clicks[i].append(c)
            prev[i] = pred[i].astype(np.float32)
    model.train(was_training)
    for e, c, m in zip(chosen, clicks, prev, strict=True):
        e.input = encode_prompt(e.image, c, m)
        if click_weight > 0 and len(c) > 1:
            near = np.zeros_like(e.weight)
            cv2.circle(near, (int(round(c[-1].x)), int(round(c[-1].y))), CLICK_WEIGHT_RADIUS,
                       float(click_weight), thickness=-1)  # fmt: skip
            e.weight = e.weight * (1.0 + near)  # a new array: void (0) stays 0
    return len(chosen)


def train_step(
    model: SqueezeSAM, opt: torch.optim.Optimizer, examples: list, lr: float, focal: bool = False
) -> dict[str, float]:
    """One optimisation step: mask BCE+Dice (`focal`: normalised focal + Dice), predicted-IoU
    MSE, class CE (shared with fine-tuning, so both optimise the same objective)."""
    x = torch.from_numpy(np.stack([e.input for e in examples]))
    target = torch.from_numpy(np.stack([e.target for e in examples]))[:, None]
    weight = torch.from_numpy(np.stack([e.weight for e in examples]))[:, None]
    cls_t = torch.tensor([e.cls for e in examples])
    for g in opt.param_groups:
        g["lr"] = lr
    logits, iou_pred, cls = model(x)
    loss_mask = mask_loss(logits, target, weight, focal)
    with torch.no_grad():  # the IoU head's target: plain IoU over non-void pixels
        valid = (weight > 0).float()
        pred = (logits > 0).float() * valid
        t = target * valid
        inter = (pred * t).sum((1, 2, 3))
        union = ((pred + t) > 0).float().sum((1, 2, 3))
        true_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    loss_iou = F.mse_loss(iou_pred[:, 0], true_iou)
    has_cls = (cls_t >= 0).any()
    loss_cls = F.cross_entropy(cls, cls_t, ignore_index=-1) if has_cls else cls.sum() * 0
    loss = loss_mask + loss_iou + CLASS_LOSS_WEIGHT * loss_cls
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return {
        "mask": loss_mask.item(),
        "iou": loss_iou.item(),
        "cls": loss_cls.item(),
        "batch_iou": true_iou.mean().item(),
    }


def cosine_lr(
    base: float, step: int, total: int, start: int, warmup: int = 100, origin: int = 0
) -> float:
    """Cosine decay to 5 % from step `origin` to `total`; a short warmup after every
    (re)start, since the optimizer state is not kept. An `origin` after 0 is a warm
    restart (SGDR, Loshchilov & Hutter 2017): new blocks need a learning rate that the
    old schedule's tail no longer gives."""
    warm = min(1.0, (step - start + 1) / warmup)
    progress = min(1.0, max(0.0, (step - origin) / max(1, total - origin)))
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(cfg: TrainConfig) -> dict[str, float]:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.log_file:
        cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(cfg.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    if cfg.checkpoint.is_file():
        model, start, meta = load_checkpoint(cfg.checkpoint, refine=cfg.refine_head)
        log.info("resuming from %s at step %d", cfg.checkpoint, start)
    else:
        model, start, meta = build_model(pretrained=True, refine=cfg.refine_head), 0, {}
        log.info("starting from ImageNet EfficientNet-Lite0 encoder")
    if "soup" in meta:  # trained further, no longer an average: its export is a base model
        meta["trained_from_soup"] = meta.pop("soup")
    if cfg.deepen and model.encoder.variant == "lite0":  # resuming a grown one: as it is
        model = deepen(model)
        meta["deepened"] = {"at_step": start}
        log.info("encoder grown from lite0 to lite1 at step %d", start)
    if model.refine is not None and "refine_head" not in meta:
        meta["refine_head"] = {"added_at_step": start, "frozen_base": cfg.freeze_base}
    if cfg.freeze_base:
        if model.refine is None:
            raise ValueError("--freeze-base trains the RefineHead alone: add it (--refine-head)")
        model.freeze_base = True  # model.train() now leaves all but the head in eval mode
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("refine."))
    cfg.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train_samples = load_samples(cfg.data, "train")
    # which sets this checkpoint has seen (a customer experiment must hold one out)
    meta["data_sets"] = sorted(set(meta.get("data_sets", [])) | {s.set_name for s in train_samples})
    val_samples = val_subset(load_samples(cfg.data, "val"), cfg.val_per_set)
    t0 = time.time()
    loaded = [Loaded.from_sample(s) for s in train_samples]
    log.info("decoded %d training images in %.0f s", len(loaded), time.time() - t0)
    maker = ExampleMaker(
        loaded,
        cfg.size,
        max_scale=cfg.max_scale,
        crowd_p=cfg.crowd_p,
        crowd_clicks=cfg.crowd_clicks,
        object_view_p=cfg.object_view_p,
        interior_click_p=cfg.interior_click_p,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    model.train()
    metrics: dict[str, float] = dict(meta.get("last_val", {}))
    bar = tqdm(range(start, start + cfg.steps), total=cfg.steps, desc="train", mininterval=5)
    seconds = float(meta.get("train_seconds", 0.0))
    for step in bar:
        t_step = time.time()
        # Seeded per step: a resumed run draws the same examples as an uninterrupted one.
        rng = np.random.default_rng([cfg.seed, step])
        lr = cosine_lr(cfg.lr, step, cfg.total_steps, start, origin=cfg.schedule_start)
        examples = draw_batch(maker, rng, cfg.batch)
        rollout(model, examples, rng, cfg.rollout_p, cfg.rollout_iters, cfg.click_weight)
        losses = train_step(model, opt, examples, lr, cfg.mask_loss == "nfl")
        seconds += time.time() - t_step
        bar.set_postfix(
            {k: f"{v:.3f}" for k, v in losses.items()}
            | {"val_1click": f"{metrics.get('val_1click', 0):.3f}"}
        )
        done = step + 1
        if done % 20 == 0:
            log.info(
                "step %d lr %.2e %s",
                done,
                lr,
                " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
            )
        if done % cfg.save_every == 0 or done == start + cfg.steps:
            meta.update(
                train_seconds=seconds, size=cfg.size, max_scale=cfg.max_scale, batch=cfg.batch
            )
            save_checkpoint(model, done, cfg.checkpoint, meta)
        if done % cfg.val_every == 0 or done == start + cfg.steps:
            metrics = quick_validate(model, val_samples)
            meta.update(last_val=metrics, last_val_step=done)
            save_checkpoint(model, done, cfg.checkpoint, meta)
            log.info("step %d validation %s", done, json.dumps(metrics))
    return metrics


def main_args(args) -> None:  # called by the CLI
    cfg = TrainConfig(
        data=Path(args.data) if args.data else default_data_root(),
        checkpoint=Path(args.checkpoint),
        steps=args.steps,
        total_steps=args.total_steps,
        batch=args.batch,
        size=args.size,
        max_scale=args.max_scale,
        lr=args.lr,
        seed=args.seed,
        val_every=args.val_every,
        threads=args.threads,
        log_file=Path(args.log_file) if args.log_file else None,
        rollout_p=args.rollout_p,
        crowd_p=args.crowd_p,
        crowd_clicks=not args.crowd_zero_click_only,
        object_view_p=args.object_view_p,
        interior_click_p=args.interior_click_p,
        rollout_iters=args.rollout_iters,
        click_weight=args.click_weight,
        refine_head=args.refine_head,
        freeze_base=args.freeze_base,
        mask_loss=args.mask_loss,
        deepen=args.deepen,
        schedule_start=args.schedule_start,
    )
    train(cfg)
