"""Crowded scenes: `find_objects` next to the one-pass-per-component baseline, same run.

    python benchmarks/zero_click_groups.py [--data ../shared/data] [--split val|train]
                                           [--model PATH] [--sets coco128_seg,...]

For every image of the sets (default: those whose name starts with "coco", the ones with
every instance annotated): each person/pet of at least 32x32 px counts as found when a
zero-click region matches it at IoU >= 0.5, one region per object (models/evaluate.py's
`crowd_figures`, as `squeezesam eval` prints it); unmatched = regions matching no
annotated object at IoU >= 0.5; passes = network passes per image.

Baseline: the algorithm before 2026-12-07 (each salient component one pass, its interior
points clicked and itself the previous mask), so the two are paired on the same images.
The train splits were seen in training (levels optimistic); the val splits are small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from squeezesam.models.clicks import iou
from squeezesam.models.data import discover_sets, load_set
from squeezesam.models.evaluate import annotated_objects, crowd_figures
from squeezesam.models.objects import (
    DEDUP_IOU,
    MIN_AREA_FRACTION,
    component_clicks,
    find_objects,
    saliency,
)
from squeezesam.models.predictor import DEFAULT_MODEL_PATH, Predictor, _sigmoid


class CountingPredictor:
    """The predictor, counting its passes."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.passes = predictor, 0

    def run_network(self, *args, **kwargs):
        self.passes += 1
        return self.predictor.run_network(*args, **kwargs)


def one_pass_per_component(predictor, prepared, max_objects: int = 8) -> list[np.ndarray]:
    """The baseline: every salient component one pass, whatever it holds."""
    h, w = prepared.valid_size
    binary = (saliency(predictor, prepared) > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    found: list[np.ndarray] = []
    for i in order[:max_objects]:
        if stats[i, cv2.CC_STAT_AREA] < MIN_AREA_FRACTION * h * w:
            break
        component = labels == i
        prev = np.zeros(prepared.pixels.shape[:2], np.float32)
        prev[:h, :w] = component
        logits, _, _ = predictor.run_network(prepared.pixels, component_clicks(component), prev)
        mask = _sigmoid(logits[:h, :w]) > 0.5
        if mask.any() and not any(iou(mask, m) > DEDUP_IOU for m in found):
            found.append(mask)
    oh, ow = prepared.original_size
    return [
        cv2.resize(m.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST) > 0 for m in found
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--split", default="val", choices=["val", "train"])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_PATH))
    ap.add_argument("--sets", help="comma-separated set names (default: coco*)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    counting = CountingPredictor(Predictor(Path(args.model), threads=args.threads))
    methods = {
        "baseline (one pass per component)": one_pass_per_component,
        "find_objects (groups covered)": lambda p, prep: [f.mask for f in find_objects(p, prep)],
    }
    stats = {name: {"hits": [], "unmatched": [], "passes": []} for name in methods}
    wanted = set(args.sets.split(",")) if args.sets else None
    for folder in discover_sets(Path(args.data)):
        if (folder.name not in wanted) if wanted else not folder.name.startswith("coco"):
            continue
        for sample in (s for s in load_set(folder) if s.split == args.split):
            image, mask = sample.load_image(), sample.load_mask()
            void = mask == 255
            labels, areas = annotated_objects(sample, mask)
            gts = {k: mask == k for k in labels}
            prepared = counting.predictor.prepare(image)
            for name, method in methods.items():
                counting.passes = 0
                masks = method(counting, prepared)
                hits, unmatched = crowd_figures(masks, gts, labels, areas, void)
                st = stats[name]
                st["hits"] += hits
                st["unmatched"].append(unmatched)
                st["passes"].append(counting.passes)
    print(f"{args.split} split, model {Path(args.model).name}")
    for name, st in stats.items():
        hits = st["hits"]
        print(f"{name:36s} recall {np.mean(hits):.3f} ({sum(hits)} of {len(hits)})"
              f"  unmatched/image {np.mean(st['unmatched']):.2f}"
              f"  passes/image {np.mean(st['passes']):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
