"""A fine-tuning run that plays a customer's project, on one shared set.

    python benchmarks/finetune_customer.py --set ccp_person --labels 500 --steps 300 \
        [--base-checkpoint runs/base_no_ccp_fp16.pt \
         --base-model runs/base_no_ccp/squeezesam_int8.onnx]

The set plays the customer: `--labels` of its *train* images are the labels the
customer submitted; its *val* images (at most `--heldout`) are held out and never
trained on. The run is what the `train` queue does (models.finetune.finetune from the
base fp16 checkpoint, base-data replay from the *other* shared sets, then
models.finetune.gate with a guard set from those other sets) and prints, as JSON, the
held-out NoC@90 / NoC@85 / 1-click mIoU of the base model and of the candidate, the
gate's decision and the times.

A faithful customer test needs a base that never saw the set: train one without it
(`squeezesam train-base --data <root without the set> --checkpoint B.pt`, export it with
`squeezesam export --checkpoint B.pt --out-dir D`) and pass both here. The JSON says
whether the base saw the set (from the `data_sets` the checkpoint records); the shipped
base was trained on every shared set, so with the defaults this measures fine-tuning on
data the base has already seen.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from squeezesam.models.augment import ROLLOUT_P
from squeezesam.models.data import default_data_root, discover_sets, load_set, write_set
from squeezesam.models.predictor import DEFAULT_MODEL_PATH
from squeezesam.models.train import CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", required=True, help="shared set playing the customer")
    parser.add_argument("--labels", type=int, default=500, help="customer labels (train)")
    parser.add_argument("--heldout", type=int, default=100, help="most held-out val images")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--guard-per-set", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--out", type=Path, help="work folder (default: a temp folder)")
    parser.add_argument(
        "--base-checkpoint",
        type=Path,
        default=CHECKPOINT,
        help="fp16 weights fine-tuning starts from (default: shipped)",
    )
    parser.add_argument(
        "--base-model",
        type=Path,
        default=DEFAULT_MODEL_PATH,
        help="int8 ONNX of that base, the gate's current model",
    )
    parser.add_argument(
        "--rollout-p",
        type=float,
        default=ROLLOUT_P,
        help="share of click examples trained on rollouts (as the base)",
    )
    args = parser.parse_args()

    from squeezesam.models.finetune import finetune, gate, guard_samples

    sets = {f.name: f for f in discover_sets(args.data)}
    if args.set not in sets:
        raise SystemExit(f"no set {args.set!r} under {args.data}; have {sorted(sets)}")
    samples = load_set(sets[args.set])
    train = [s for s in samples if s.split == "train"][: args.labels]
    heldout = [s for s in samples if s.split == "val"][: args.heldout]
    work = args.out or Path(tempfile.mkdtemp(prefix="finetune_customer_"))
    project = work / "project"
    write_set(train + heldout, project, link=True)
    others = work / "base"  # replay + guard: every other shared set, never this one
    others.mkdir(parents=True, exist_ok=True)
    for name, folder in sets.items():
        if name != args.set:
            os.symlink(folder.resolve(), others / name)
    base_sets = _trained_on(args.base_checkpoint)
    saw = None if base_sets is None else args.set in base_sets
    t0 = time.time()
    result = finetune(project, args.base_checkpoint, work / "candidate", steps=args.steps,
                      batch=args.batch, size=args.size, replay_data=others,
                      threads=args.threads, version=f"customer-{args.set}",
                      rollout_p=args.rollout_p)  # fmt: skip
    t_train = time.time() - t0
    guard = guard_samples(others, args.guard_per_set) if args.guard_per_set else []
    t1 = time.time()
    heldout_project = [s for s in load_set(project) if s.split == "val"]
    decision = gate(result.int8, args.base_model, heldout_project, guard, args.max_clicks)
    t_gate = time.time() - t1

    def brief(m: dict) -> dict:
        keys = ("noc85", "noc90", "failures90", "miou_1click", "miou_3click", "objects")
        return {k: m.get(k) for k in keys if k in m}

    print(json.dumps({
        "set": args.set, "train_labels": len(train), "heldout_images": len(heldout),
        "steps": args.steps, "batch": args.batch, "size": args.size,
        "max_clicks": args.max_clicks, "guard_images": len(guard),
        "base": {k: brief(v) for k, v in decision.current.items()},
        "candidate": {k: brief(v) for k, v in decision.candidate.items()},
        "promote": decision.promote, "reason": decision.reason,
        "finetune_s": round(t_train, 1), "gate_s": round(t_gate, 1),
        "base_checkpoint": str(args.base_checkpoint), "base_model": str(args.base_model),
        "base_trained_on": base_sets, "base_saw_this_set": saw,
        "rollout_p": args.rollout_p, "threads": args.threads,
        "work": str(work),
    }, indent=2))  # fmt: skip


def _trained_on(checkpoint: Path) -> list[str] | None:
    """The sets a base checkpoint was trained on (train.py records them), else None."""
    import torch

    meta = torch.load(checkpoint, map_location="cpu").get("meta", {})
    sets = meta.get("data_sets")
    return sorted(sets) if sets is not None else None


if __name__ == "__main__":
    main()
