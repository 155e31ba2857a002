"""`squeezesam eval`'s command line: segmenters from the options, one set or every set
under --data, the figures as text or one JSON object (`models/evaluate.py` computes them)."""

from __future__ import annotations

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
        # the model under evaluation only: `--compare` the same file at its own size
        working_size=(args.working_size or None) if what == "model" else None,
    )


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
    elif args.compare == "zoom-in":  # the same model, corrective clicks zoomed in
        if not isinstance(seg, OnnxSegmenter) or args.zoom_in:
            raise SystemExit("squeezesam eval: --compare zoom-in needs a model without --zoom-in")
        compare = onnx_segmenter(seg.predictor.model_path, args)
        compare.zoom_in, compare.name = True, seg.name + "+zoom"
    elif args.compare == "flip":  # the same model, each pass averaged with its mirror
        if not isinstance(seg, OnnxSegmenter) or args.flip:
            raise SystemExit("squeezesam eval: --compare flip needs a model without --flip")
        compare = onnx_segmenter(seg.predictor.model_path, args)
        compare.predictor.flip, compare.name = True, seg.name + "+flip"
    elif args.compare == "focus":  # the same model, small objects refined on their crop
        if not isinstance(seg, OnnxSegmenter) or args.focus:
            raise SystemExit("squeezesam eval: --compare focus needs a model without --focus")
        compare = onnx_segmenter(seg.predictor.model_path, args)
        compare.predictor.focus, compare.name = True, seg.name + "+focus"
    elif merge := re.fullmatch(r"merge(\d*)", args.compare or ""):
        # the same model, FocalClick's progressive merge from click N (default 2)
        if not isinstance(seg, OnnxSegmenter) or args.merge_from:
            raise SystemExit("squeezesam eval: --compare mergeN needs a model without --merge-from")
        compare = onnx_segmenter(seg.predictor.model_path, args)
        compare.predictor.merge_from = max(2, int(merge.group(1) or 2))
        compare.name = seg.name + f"+merge{compare.predictor.merge_from}"
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
                print(f"{k:>28}: {v}")
            print()
    if args.json:
        # one JSON object on the last line: the figures, or {set name: figures} per set
        print(json.dumps(results if args.per_set else results[data.name]))
