"""Model latency: p50/p95 per network pass, fp32 vs int8 ONNX at long side 320/512/768,
next to OpenCV GrabCut per click (the baseline) on the same real images, same run.

    python benchmarks/model_latency.py [--passes 30] [--threads 0] [--images 6]
                                       [--candidate runs/x/squeezesam_int8.onnx]

`--candidate` times another int8 model (a new architecture) in the same run, beside the
shipped one, so the two figures share the machine's state.

Budget (issue 4): int8 at 512 <= 40 ms p50 on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from squeezesam.models.clicks import first_click
from squeezesam.models.data import default_data_root, discover_sets, load_set
from squeezesam.models.predictor import WEIGHTS_DIR, Predictor
from squeezesam.models.segmenters import GrabCutSegmenter


def real_images(n: int):
    out = []
    sets = discover_sets(default_data_root())
    for i in range(n):
        samples = [s for s in load_set(sets[i % len(sets)]) if s.split == "val"]
        s = samples[i // len(sets) % len(samples)]
        mask = s.load_mask()
        out.append((s.load_image(), first_click(mask == s.objects[0].index)))
    return out


def percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--passes", type=int, default=30, help="timed passes per model and size")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all cores)")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--candidate", type=Path, help="another int8 ONNX model to time beside")
    args = ap.parse_args()
    if args.candidate and not args.candidate.is_file():
        ap.error(f"--candidate {args.candidate}: no such file")
    images = real_images(args.images)
    models = {kind: WEIGHTS_DIR / f"squeezesam_{kind}.onnx" for kind in ("fp32", "int8")}
    if args.candidate:
        models["candidate int8"] = args.candidate
    rows = []
    for size in (320, 512, 768):
        for kind, path in models.items():
            p = Predictor(path, threads=args.threads or None, working_size=size)
            preps = [(p.prepare(img), [click]) for img, click in images]
            for prep, clicks in preps[:2]:  # warm-up
                p.predict(prep, clicks)
            times = []
            for i in range(args.passes):
                prep, clicks = preps[i % len(preps)]
                working = [prep.to_working(c) for c in clicks]
                t = time.perf_counter()
                p.run_network(prep.pixels, working, None)
                times.append(time.perf_counter() - t)
            rows.append((f"squeezesam {kind}", size, *percentiles(times)))
    gc = GrabCutSegmenter()
    times = []
    for i in range(min(args.passes, 12)):
        img, click = images[i % len(images)]
        state = gc.prepare(img)
        t = time.perf_counter()
        gc.segment(state, [click], None)
        times.append(time.perf_counter() - t)
    rows.append(("grabcut (baseline)", gc.work, *percentiles(times)))
    base = rows[-1][2]
    print(f"{'model':<26} {'long side':>9} {'p50 ms':>8} {'p95 ms':>8} {'p50 vs grabcut':>15}")
    for name, size, p50, p95 in rows:
        print(f"{name:<26} {size:>9} {p50:>8.1f} {p95:>8.1f} {p50 / base:>14.2f}x")
    for kind, path in models.items():
        print(f"size {kind}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
