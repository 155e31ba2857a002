"""Model subcommands of the `squeezesam` CLI: train-base, export, soup, eval.

Imports of torch-using modules happen inside the handlers, so `squeezesam serve`
never imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # also NaN
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1, got {text}")
    return value


def _train_base(args: argparse.Namespace) -> None:
    from squeezesam.models.train import main_args

    main_args(args)


def _export(args: argparse.Namespace) -> None:
    from squeezesam.models.export import main_args

    main_args(args)


def _soup(args: argparse.Namespace) -> None:
    from squeezesam.models.soup import main_args

    main_args(args)


def _eval(args: argparse.Namespace) -> None:
    from squeezesam.models.evaluate_cli import main_args

    main_args(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    # the path only: importing .train here would import torch into every process
    from squeezesam.models.predictor import WEIGHTS_DIR

    checkpoint = WEIGHTS_DIR / "squeezesam_fp16.pt"  # same as train.CHECKPOINT
    _register_train(subparsers, checkpoint)
    _register_export_and_soup(subparsers, checkpoint)
    _register_eval(subparsers)


def _register_train(subparsers: argparse._SubParsersAction, checkpoint: Path) -> None:
    from squeezesam.models.augment import CROWD_P, INTERIOR_CLICK_P, ROLLOUT_P
    from squeezesam.models.crops import MAX_SCALE, OBJECT_VIEW_P

    p = subparsers.add_parser(
        "train-base", help="train SqueezeSAM on the shared data (CPU, resumable)"
    )
    p.add_argument("--data", help="root of image sets (default: ../shared/data)")
    p.add_argument(
        "--checkpoint", default=str(checkpoint), help="fp16 weights to resume from and write"
    )
    p.add_argument("--steps", type=int, default=2000, help="steps to run now")
    p.add_argument("--total-steps", type=int, default=4500, help="cosine schedule length")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256, help="training crop size")
    p.add_argument(
        "--max-scale", type=float, default=MAX_SCALE,
        help="rescaled long side drawn in [size, max-scale * size] before cropping",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-file", default="runs/train_base.log")
    p.add_argument(
        "--rollout-p", type=_share, default=ROLLOUT_P,
        help="share of click examples trained on no-grad rollouts (RITM); 0 = synthetic only",
    )  # fmt: skip
    p.add_argument(
        "--rollout-iters", type=_at_least_one, default=3,
        help="a rollout adds 1..N clicks on the network's own errors (RITM: 3)",
    )  # fmt: skip
    p.add_argument(
        "--click-weight", type=_non_negative, default=0.0,
        help="extra mask-loss weight near a rollout's last click (0 = off)",
    )  # fmt: skip
    p.add_argument(
        "--refine-head", action="store_true",
        help="add the stride-2 boundary RefineHead (zero-initialised) if the checkpoint has none",
    )  # fmt: skip
    p.add_argument(
        "--freeze-base", action="store_true",
        help="train the RefineHead alone: every other weight and BatchNorm statistic stays",
    )  # fmt: skip
    p.add_argument(
        "--mask-loss", choices=["bce", "nfl"], default="bce",
        help="mask loss: BCE + Dice, or normalised focal + Dice (weight on pixels still wrong)",
    )  # fmt: skip
    p.add_argument(
        "--deepen", action="store_true",
        help="grow a Lite0 checkpoint's encoder to EfficientNet-Lite1 (5 more blocks, "
        "starting as the identity); a Lite1 checkpoint resumes as it is",
    )  # fmt: skip
    p.add_argument(
        "--schedule-start", type=_non_negative_int, default=0,
        help="step where the cosine schedule starts (a warm restart; 0 = the run's start)",
    )  # fmt: skip
    p.add_argument(
        "--crowd-p", type=_share, default=CROWD_P,
        help="share of examples made crowd scenes: 3-8 people/pets pasted small (augment.py)",
    )  # fmt: skip
    p.add_argument(
        "--crowd-zero-click-only", action="store_true",
        help="crowd scenes only in zero-click examples (--crowd-p is then their share of those)",
    )  # fmt: skip
    p.add_argument(
        "--object-view-p", type=_share, default=OBJECT_VIEW_P,
        help="share of click examples cropped to the target's box, as zoom-in and focus view show",
    )  # fmt: skip
    p.add_argument(
        "--interior-click-p", type=_share, default=INTERIOR_CLICK_P,
        help="share of click examples whose first click is the object's most interior point "
        "(the evaluation protocol's) instead of anywhere inside",
    )  # fmt: skip
    p.set_defaults(func=_train_base)


def _register_export_and_soup(subparsers: argparse._SubParsersAction, checkpoint: Path) -> None:
    p = subparsers.add_parser("export", help="export the checkpoint to ONNX fp32 + int8")
    p.add_argument("--checkpoint", default=str(checkpoint))
    p.add_argument("--out-dir", help="default: models/weights")
    p.add_argument("--data", help="calibration images root (default: ../shared/data)")
    p.add_argument("--version", help="model version string (default: from the checkpoint step)")
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "soup", help="average checkpoints of one run into one (a model soup; models/soup.py)"
    )
    p.add_argument("--out", required=True, help="fp16 checkpoint to write")
    p.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT[:WEIGHT]",
        help="fp16 checkpoints of one lineage, each with an optional weight (default 1)",
    )  # fmt: skip
    p.set_defaults(func=_soup)


def _register_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="interactive-segmentation evaluation (NoC protocol)")
    p.add_argument("--data", required=True, help="a set folder, or a root of sets")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", help="ONNX model (default: the shipped int8 model)")
    g.add_argument(
        "--baseline", choices=["grabcut"], help="run a baseline through the same clicker"
    )
    p.add_argument(
        "--compare",
        metavar="MODEL|grabcut|zoom-in|flip|focus|guided|mergeN",
        help="a second model, grabcut, or this model with --zoom-in, --flip, --focus, "
        "--guided or --merge-from N, on the same objects: paired NoC@90 difference",
    )
    p.add_argument("--split", default="val", choices=["val", "train", "all"])
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--max-images", type=int, default=0, help="0 = all")
    p.add_argument(
        "--part-clicks", action="store_true", help="also: one click on a part -> whole-object IoU"
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all cores)")
    p.add_argument("--per-set", action="store_true", help="evaluate every set under --data apart")
    p.add_argument(
        "--no-previous-mask",
        action="store_true",
        help="clicks only: do not feed the last mask back",
    )
    p.add_argument(
        "--saliency-size",
        type=int,
        default=0,
        help="long side of the zero-click pass (0: working size)",
    )
    p.add_argument(
        "--zoom-in", action="store_true",
        help="corrective clicks on a crop around the object (RITM zoom-in; Predictor.zoom_view)",
    )  # fmt: skip
    p.add_argument(
        "--working-size", type=int, default=0,
        help="long side the model sees (0: the model's own, 512); not applied to --compare",
    )  # fmt: skip
    p.add_argument(
        "--flip", action="store_true",
        help="average each pass with one on the mirrored image (two passes a click)",
    )  # fmt: skip
    p.add_argument(
        "--guided", action="store_true",
        help="the click's mask edge moved onto the image's edges (guided filter; "
        "models/guided_filter.py)",
    )  # fmt: skip
    p.add_argument(
        "--focus", action="store_true",
        help="refine each small object with a pass on its crop (FocalClick; models/predictor.py)",
    )  # fmt: skip
    p.add_argument(
        "--merge-from", type=int, default=0, metavar="N",
        help="from the Nth click on, keep only the change under the new click (FocalClick's "
        "progressive merge; 0 = off)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    p.set_defaults(func=_eval)
