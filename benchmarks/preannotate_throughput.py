"""Whole-project pre-annotation throughput, end to end, next to an in-process baseline.

    python benchmarks/preannotate_throughput.py [--images 60] [--workers 1,2] [--threads 1]

A stand-in Label Studio (tests/backend/ls_standin.py: /api/projects, /api/tasks,
/api/predictions, /data/upload images from the shared data sets) holds N tasks of real
images. Each run: an embedded Redis, W `squeezesam worker --queues preannotate`
processes, then the planning job and its chunks, until every task has its prediction
in the stand-in: fetch task, download, decode, model (1 saliency pass + 1 pass per
object), clean, RLE, POST /api/predictions. Images/s counts from the first job to the
last write (workers already warm).

Baseline, same run, same images: one synchronous in-process loop of decode + model +
clean + RLE (`jobs.preannotate`'s work without Label Studio, Redis or queueing).
Prints both and the ratio, plus a per-stage profile of the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "backend"))

from ls_standin import TOKEN, StandInLabelStudio  # noqa: E402

from squeezesam.backend.images import decode  # noqa: E402
from squeezesam.backend.labelstudio import (  # noqa: E402
    brush_result,
    object_label,
    parse_label_config,
)
from squeezesam.backend.masks import clean_mask  # noqa: E402
from squeezesam.backend.preannotate import run_status, start_project  # noqa: E402
from squeezesam.backend.queues import alive_workers  # noqa: E402
from squeezesam.backend.redis_conn import EmbeddedRedis  # noqa: E402
from squeezesam.backend.settings import Settings  # noqa: E402
from squeezesam.models import objects  # noqa: E402
from squeezesam.models.predictor import DEFAULT_MODEL_PATH, Predictor  # noqa: E402

CONFIG = (REPO / "annotation_configs" / "people_pets.xml").read_text()
DATA = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def pick_images(n: int) -> list[Path]:
    """Real images, interleaved across the shared sets."""
    by_set = [sorted(d.glob("images/*.jpg")) for d in sorted(DATA.iterdir()) if d.is_dir()]
    by_set = [s for s in by_set if s]
    picked: list[Path] = []
    i = 0
    while len(picked) < n:
        for files in by_set:
            if i < len(files) and len(picked) < n:
                picked.append(files[i])
        i += 1
    return picked


def baseline(images: list[Path], model: Path, threads: int) -> tuple[float, dict[str, float]]:
    predictor = Predictor(model, threads=threads)
    config = parse_label_config(CONFIG)
    stages = {"decode+letterbox": 0.0, "saliency pass": 0.0, "object passes": 0.0,
              "clean+RLE": 0.0}  # fmt: skip
    real_saliency = objects.saliency

    def timed_saliency(*args):
        t = time.perf_counter()
        out = real_saliency(*args)
        stages["saliency pass"] += time.perf_counter() - t
        return out

    objects.saliency = timed_saliency
    objects_found = 0
    try:
        # warm: the first pass and the RLE encoder's imports (~2 s) are not throughput
        warm = predictor.predict(predictor.prepare(decode(images[0].read_bytes(), 10**9)), [])
        brush_result(clean_mask(warm.mask), "Person", 1.0, config)
        started = time.perf_counter()
        for path in images:
            t0 = time.perf_counter()
            prepared = predictor.prepare(decode(path.read_bytes(), 10**9))
            t1 = time.perf_counter()
            found = objects.find_objects(predictor, prepared)
            t2 = time.perf_counter()
            for obj in found:
                labelled = object_label(obj.label, obj.class_probs, obj.score, config)
                if labelled:
                    brush_result(clean_mask(obj.mask), *labelled, config)
            t3 = time.perf_counter()
            objects_found += len(found)
            stages["decode+letterbox"] += t1 - t0
            stages["object passes"] += t2 - t1
            stages["clean+RLE"] += t3 - t2
        elapsed = time.perf_counter() - started
    finally:
        objects.saliency = real_saliency
    stages["object passes"] -= stages["saliency pass"]
    stages["objects per image"] = objects_found / len(images)
    return len(images) / elapsed, stages


def service(images: list[Path], model: Path, workers: int, threads: int) -> tuple[float, dict]:
    standin = StandInLabelStudio.from_folder(images, CONFIG).start()
    ids = standin.add_tasks(1, [p.name for p in images])
    server = EmbeddedRedis()
    settings = Settings(label_studio_url=standin.url, label_studio_api_key=TOKEN,
                        redis_url=server.url, model_path=str(model), model_threads=threads,
                        preannotate_chunk=4)  # fmt: skip
    env = os.environ | settings.to_env() | {"LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "worker", "--queues", "preannotate"]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(workers)]
    conn = redis.Redis.from_url(server.url)
    try:
        while len(alive_workers(conn, "preannotate")) < workers:
            time.sleep(0.2)
        started = time.perf_counter()
        start_project(conn, dataclasses.replace(settings), 1)
        while sum(bool(standin.predictions_of(t)) for t in ids) < len(ids):
            if run_status(conn, 1).get("failed"):
                raise RuntimeError(f"tasks failed: {run_status(conn, 1)['errors'][:3]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        return len(ids) / elapsed, run_status(conn, 1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        server.close()
        standin.stop()


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in is quiet
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads each")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    args = parser.parse_args()
    images = pick_images(args.images)
    print(f"{len(images)} real images, model {args.model.name}, {os.cpu_count()} cores")
    base, stages = baseline(images, args.model, args.threads)
    print(f"baseline (in-process loop, {args.threads} thread): {base:.2f} images/s")
    for name, seconds in stages.items():
        unit = "" if name == "objects per image" else " ms/image"
        value = seconds if not unit else 1000 * seconds / len(images)
        print(f"  {name:>18}: {value:.2f}{unit}")
    for w in [int(x) for x in args.workers.split(",") if x]:
        rate, status = service(images, args.model, w, args.threads)
        done = f"done {status['done']}/{status['total']}"
        print(
            f"service, {w} worker(s) x {args.threads} thread: {rate:.2f} images/s "
            f"({rate / base:.2f}x baseline; {done})"
        )


if __name__ == "__main__":
    main()
