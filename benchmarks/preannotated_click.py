"""A click on a pre-annotated person or pet, next to the same click on a fresh task.

    python benchmarks/preannotated_click.py [--data ../shared/data] [--split val]
                                            [--model PATH] [--threads 1]

For every person/pet of the split: the task is pre-annotated as serving does it
(`find_objects`, zero clicks), then one click lands at the object's most interior point
(the RITM clicker's first click). Served, the region under that click becomes the
previous mask (`backend/jobs.py::region_under_click`); the baseline, measured in the same
run on the same objects, is the same click on a fresh task (no previous mask). Objects
whose click lands on no region are left out (serving treats both alike). Printed: mIoU of
the region itself, of the fresh click and of the click on the region, per set and in
all, and how many objects move by more than 0.05 either way. The predictor runs as the
workers do (focus view and zoom-in as the environment sets them).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from squeezesam.backend.settings import Settings
from squeezesam.backend.worker import load_predictor
from squeezesam.models.clicks import Click, interior_point, iou
from squeezesam.models.data import default_data_root, discover_sets, load_set
from squeezesam.models.evaluate import annotated_objects
from squeezesam.models.objects import find_objects
from squeezesam.models.predictor import DEFAULT_MODEL_PATH, Predictor

MOVED = 0.05


def measure(predictor: Predictor, data: Path, split: str) -> dict[str, list[tuple]]:
    """Per set: (IoU of the region, of the fresh click, of the click on the region)."""
    rows: dict[str, list[tuple]] = {}
    for folder in discover_sets(data):
        for sample in load_set(folder):
            if split != "all" and sample.split != split:
                continue
            mask = sample.load_mask()
            labels, _ = annotated_objects(sample, mask)
            wanted = [k for k, label in labels.items() if label in ("person", "pet")]
            if not wanted:
                continue
            prepared = predictor.prepare(sample.load_image())
            found = find_objects(predictor, prepared)
            void = mask == 255
            for k in wanted:
                gt = mask == k
                point = interior_point(gt)
                if point is None:
                    continue
                click = Click(point[0], point[1], True)
                y, x = int(click.y), int(click.x)
                region = next((f.mask for f in found if f.mask[y, x]), None)
                if region is None:
                    continue
                fresh = predictor.predict(prepared, [click]).mask
                served = predictor.predict(prepared, [click], region.astype(np.float32)).mask
                rows.setdefault(folder.name, []).append(
                    (iou(region, gt, void), iou(fresh, gt, void), iou(served, gt, void))
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"model file not found: {args.model}")
    if not discover_sets(args.data):
        parser.error(f"no image set (images/, masks/, objects.csv) under {args.data}")
    # the workers' predictor: focus view and zoom-in as the environment sets them
    predictor = load_predictor(args.model, replace(Settings.from_env(), model_threads=args.threads))
    rows = measure(predictor, args.data, args.split)
    if not rows:
        parser.error(f"no person or pet under a pre-annotated region in {args.data}")
    print(f"model {predictor.version}, {args.split} splits; mIoU: region / fresh click / "
          "click on the region")  # fmt: skip
    for name, figures in sorted(rows.items()) + [("all", sum(rows.values(), []))]:
        a = np.array(figures)
        d = a[:, 2] - a[:, 1]
        print(f"{name:22s} {len(a):4d} objects  {a[:, 0].mean():.4f} / {a[:, 1].mean():.4f} / "
              f"{a[:, 2].mean():.4f}  on region worse by > {MOVED}: {(d < -MOVED).sum()}, "
              f"better: {(d > MOVED).sum()}")  # fmt: skip


if __name__ == "__main__":
    main()
