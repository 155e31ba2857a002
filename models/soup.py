"""`squeezesam soup`: the weighted average of checkpoints of one lineage (a model soup).

Wortsman et al. 2022 ("Model soups", ICML) average the weights of models fine-tuned from
one starting point; WiSE-FT (Wortsman et al. 2022, CVPR) interpolates a fine-tuned model
with the one it started from. Here the ingredients are phases of the same run: a
click-quality checkpoint and one trained further on zero-click crowd scenes. Each phase
alone trades one skill for the other (models/MODEL_CARD.md); their average keeps both
better than either (measured there). Float tensors are averaged, BatchNorm's running
statistics included; integer ones (BatchNorm's batch counters) are taken from the first.

The result is an ordinary fp16 checkpoint: its step is the ingredients' largest (a resumed
run continues the cosine schedule from there) and its meta names the ingredients, which
`squeezesam export` turns into a `squeezesam-soup-...` version.
"""

from __future__ import annotations

from pathlib import Path

import torch


class SoupError(ValueError):
    """Checkpoints that cannot be averaged, or weights that make no soup."""


def parse_ingredient(text: str) -> tuple[Path, float]:
    """`PATH` or `PATH:WEIGHT` -> (path, weight); weight 1 when left out."""
    path, sep, weight = text.rpartition(":")
    try:
        value = float(weight) if sep else None
    except ValueError:  # a colon that is part of the path
        value = None
    if value is None:
        return Path(text), 1.0
    if not value > 0:
        raise SoupError(f"weight of {path} must be positive, got {weight}")
    return Path(path), value


def average_checkpoints(ingredients: list[tuple[Path, float]]) -> dict:
    """The soup of these (checkpoint, weight) pairs as a checkpoint blob; weights are
    normalised to sum to one."""
    if len(ingredients) < 2:
        raise SoupError("a soup needs at least two checkpoints")
    blobs = []
    for path, _ in ingredients:
        if not path.is_file():
            raise SoupError(f"checkpoint {path} not found")
        try:
            blob = torch.load(path, map_location="cpu")
        except Exception as exc:  # not a torch file, truncated, or unpicklable
            raise SoupError(f"{path} is not a checkpoint ({type(exc).__name__})") from exc
        if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
            raise SoupError(f"{path} is not a checkpoint (no state_dict)")
        blobs.append(blob)
    total = sum(w for _, w in ingredients)
    weights = [w / total for _, w in ingredients]
    first = blobs[0]["state_dict"]
    for (path, _), blob in zip(ingredients[1:], blobs[1:], strict=True):
        state = blob["state_dict"]
        if state.keys() != first.keys():
            raise SoupError(f"{path} is not the same network as {ingredients[0][0]}")
        for key, value in first.items():
            if state[key].shape != value.shape:
                raise SoupError(f"{path}: {key} has shape {tuple(state[key].shape)}, "
                                f"{ingredients[0][0]} {tuple(value.shape)}")  # fmt: skip
    state = {}
    for key, value in first.items():
        if value.is_floating_point():
            parts = zip(weights, blobs, strict=True)
            state[key] = sum(w * b["state_dict"][key].float() for w, b in parts).to(value.dtype)
        else:
            state[key] = value
    meta = dict(blobs[0].get("meta") or {})
    meta["soup"] = [
        {"checkpoint": path.name, "step": int(b.get("step", 0)), "weight": round(w, 4)}
        for (path, _), b, w in zip(ingredients, blobs, weights, strict=True)
    ]
    return {"state_dict": state, "step": max(int(b.get("step", 0)) for b in blobs), "meta": meta}


def main_args(args) -> None:  # called by the CLI
    out = Path(args.out)
    try:
        blob = average_checkpoints([parse_ingredient(t) for t in args.checkpoints])
    except SoupError as exc:
        raise SystemExit(f"squeezesam soup: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(out)
    soup = blob["meta"]["soup"]
    parts = ", ".join(f"{p['checkpoint']} (s{p['step']}) x{p['weight']}" for p in soup)
    print(f"{out}: {parts}")
