"""`squeezesam eval`'s command line: segmenters from the options, one set or every set
under --data, the figures as text or one JSON object (`models/evaluate.py` computes them)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from squeezesam.models.data import discover_sets
from squeezesam.models.evaluate import evaluate
from squeezesam.models.predictor import DEFAULT_MODEL_PATH
from squeezesam.models.segmenters import GrabCutSegmenter, OnnxSegmenter, Segmenter


def onnx_segmenter(model: Path, args, what: str = "model") -> OnnxSegmenter:
    """A model under evaluation, with the command line's inference options; a missing file
    is a CLI error naming its option (`what`)."""
    if not model.is_file():
        raise SystemExit(f"squeezesam eval: {what} file {model} not found")
    return OnnxSegmenter(
        model,
        args.threads,
        args.saliency_size or None,
        not args.no_previous_mask,
        zoom_in=args.zoom_in,
        flip=args.flip,
        focus=args.focus,
        merge_from=args.merge_from,
        guided=args.guided,
        # the model under evaluation only: `--compare` the same file at its own size
        working_size=(args.working_size or None) if what == "model" else None,
    )


def same_model_with(
    seg: Segmenter, args, label: str, option: str, value: object, suffix: str
) -> OnnxSegmenter:
    """`--compare <label>`: the model under evaluation once more with one inference option
    (`option`, the attribute of the command line's --option) set to `value`, named after it
    with `suffix`; a CLI error when there is no model or the option is already on."""
    if not isinstance(seg, OnnxSegmenter) or getattr(args, option):
        flag = "--" + option.replace("_", "-")
        raise SystemExit(f"squeezesam eval: --compare {label} needs a model without {flag}")
    compare = onnx_segmenter(
        seg.predictor.model_path, argparse.Namespace(**{**vars(args), option: value})
    )
    compare.name = seg.name + suffix
    return compare


def main_args(args) -> None:  # called by the CLI
    data = Path(args.data)
    if args.merge_from < 0 or args.merge_from == 1:
        raise SystemExit("squeezesam eval: --merge-from must be 0 (off) or 2 and more")
    if not data.exists():
        raise SystemExit(f"squeezesam eval: --data {data} does not exist")
    seg: Segmenter = (
        GrabCutSegmenter()
        if args.baseline == "grabcut"
        else onnx_segmenter(Path(args.model) if args.model else DEFAULT_MODEL_PATH, args)
    )
    compare: Segmenter | None = None
    if args.compare == "grabcut":
        compare = GrabCutSegmenter()
    elif args.compare == "zoom-in":  # corrective clicks zoomed in
        compare = same_model_with(seg, args, "zoom-in", "zoom_in", True, "+zoom")
    elif args.compare == "flip":  # each pass averaged with its mirror
        compare = same_model_with(seg, args, "flip", "flip", True, "+flip")
    elif args.compare == "focus":  # small objects refined on their crop
        compare = same_model_with(seg, args, "focus", "focus", True, "+focus")
    elif args.compare == "guided":  # the mask's edge snapped to the image's
        compare = same_model_with(seg, args, "guided", "guided", True, "+guided")
    elif merge := re.fullmatch(r"merge(\d*)", args.compare or ""):
        # FocalClick's progressive merge from click N (default 2)
        n = max(2, int(merge.group(1) or 2))
        compare = same_model_with(seg, args, "mergeN", "merge_from", n, f"+merge{n}")
    elif args.compare:
        compare = onnx_segmenter(Path(args.compare), args, "--compare model")
    folders = discover_sets(data) if args.per_set else [data]
    if not folders:
        raise SystemExit(
            f"squeezesam eval: no image set (images/, masks/, objects.csv) under {data}"
        )
    results = {}
    for folder in folders:
        try:
            out = evaluate(
                seg,
                folder,
                args.split,
                args.max_clicks,
                args.part_clicks,
                args.max_images,
                compare,
            )
        except ValueError as exc:
            raise SystemExit(f"squeezesam eval: {exc}") from exc
        results[folder.name] = out
        if not args.json:
            for k, v in out.items():
                if k == "unfinished90":  # one object a line
                    print(f"{k:>28}: {len(v)} objects never at 0.90")
                    for r in v:
                        print(f"{'':>30}{r['object']}  {r['pixels']} px  best {r['best_iou']}")
                else:
                    print(f"{k:>28}: {v}")
            print()
    if args.json:
        # one JSON object on the last line: the figures, or {set name: figures} per set
        print(json.dumps(results if args.per_set else results[data.name]))
