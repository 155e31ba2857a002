"""Click latency: one click through HTTP + queue + worker, next to the model called directly.

    python benchmarks/click_latency.py [--clicks 200] [--model PATH] [--threads 0]

Starts an embedded Redis, one warm interactive worker process and the web app behind a
threaded HTTP server, then sends N interactive `/predict` calls on real images from the
shared data sets (read from disk by a local file server standing in for Label Studio,
each image clicked several times as an annotator would: the first click downloads and
caches it). The direct baseline runs the same clicks in this process through
`jobs.segment` on already prepared images, plus the RLE encoding: what a worker
computes, without HTTP, Redis and queueing. Both use the same thread count.
Prints p50/p95 of both and the overhead ratio (service / direct).
"""

from __future__ import annotations

import argparse
import http.server
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image
from werkzeug.serving import make_server

from squeezesam.backend.app import create_app
from squeezesam.backend.images import decode
from squeezesam.backend.jobs import segment
from squeezesam.backend.labelstudio import (
    ClickPrompt,
    brush_result,
    parse_label_config,
)
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.settings import Settings
from squeezesam.backend.worker import alive_workers
from squeezesam.models.predictor import DEFAULT_MODEL_PATH, Predictor

REPO = Path(__file__).resolve().parent.parent
CONFIG = (REPO / "annotation_configs" / "people_pets.xml").read_text()
CLICKS_PER_IMAGE = 5


def shared_images(count: int) -> list[Path]:
    root = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))
    images = sorted(root.glob("*/images/*.jpg"))
    if not images:
        raise SystemExit(f"no images under {root} (set SQUEEZESAM_SHARED_DATA)")
    step = max(1, len(images) // count)
    return images[::step][:count]


def click_points(n: int, seed: int = 0) -> list[tuple[float, float]]:
    rng = np.random.default_rng(seed)
    return [(float(x), float(y)) for x, y in rng.uniform(20, 80, size=(n, 2))]


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def direct(model: Path, threads: int, images: list[Path], points) -> list[float]:
    predictor = Predictor(model, threads=threads)
    config = parse_label_config(CONFIG)
    prepared = {p: predictor.prepare(decode(p.read_bytes(), 10**9)) for p in images}
    times = []
    for i, (x, y) in enumerate(points):
        image = images[i // CLICKS_PER_IMAGE]
        t0 = time.perf_counter()
        mask, predicted = segment(
            predictor, prepared[image], ClickPrompt(((x, y, True),), None, None)
        )
        brush_result(mask, "Person", predicted.score, config)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def through_service(model: Path, threads: int, images: list[Path], points) -> list[float]:
    root = images[0].parent.parent.parent
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        partial(_QuietFiles, directory=str(root)),
    )
    threading.Thread(target=files.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{files.server_address[1]}"
    server = EmbeddedRedis()
    settings = Settings(
        redis_url=server.url,
        model_path=str(model),
        model_threads=threads,
        image_allowed_hosts=(host,),
    )
    env = os.environ | settings.to_env()
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "worker", "--queues", "interactive"]
    worker = subprocess.Popen(cmd, env=env)
    web = make_server("127.0.0.1", 0, create_app(settings), threaded=True)  # as `web` runs it
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_port}/predict"
    try:
        connection = redis.Redis.from_url(server.url)
        while not alive_workers(connection, "interactive"):
            time.sleep(0.2)
        session = requests.Session()
        times = []
        for i, (x, y) in enumerate(points):
            image = images[i // CLICKS_PER_IMAGE]
            w, h = Image.open(image).size
            ref = f"http://{host}/{image.relative_to(root)}"
            body = {
                "tasks": [{"id": i // CLICKS_PER_IMAGE, "data": {"image": ref}}],
                "project": "1.1764000000",  # "<id>.<created>", as Label Studio sends it
                "label_config": CONFIG,
                "params": {"context": {"result": [_keypoint(x, y, w, h)]}},
            }
            if i % CLICKS_PER_IMAGE == 0:  # the task is opened: image fetched and cached
                session.post(url, json=body, timeout=60).raise_for_status()
            t0 = time.perf_counter()
            response = session.post(url, json=body, timeout=60)
            times.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
        return times
    finally:
        web.shutdown()
        worker.terminate()
        worker.wait(10)
        server.close()
        files.shutdown()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _keypoint(x: float, y: float, w: int, h: int) -> dict:
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": ["Person"]},
        "is_positive": True,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=200)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = parser.parse_args()
    threads = args.threads or (os.cpu_count() or 1)
    images = shared_images(-(-args.clicks // CLICKS_PER_IMAGE))
    points = click_points(args.clicks)
    version = Predictor(args.model, threads=1).version
    print(f"model {args.model} ({version}), {args.clicks} clicks on {len(images)} images, "
          f"{threads} threads")  # fmt: skip
    base = direct(args.model, threads, images, points)
    served = through_service(args.model, threads, images, points)
    (b50, b95), (s50, s95) = percentiles(base), percentiles(served)
    print(f"direct  (model + clean + RLE): p50 {b50:7.1f} ms   p95 {b95:7.1f} ms")
    print(f"service (HTTP + queue + worker): p50 {s50:7.1f} ms   p95 {s95:7.1f} ms")
    print(f"overhead ratio service/direct: p50 {s50 / b50:.3f}   p95 {s95 / b95:.3f}")


if __name__ == "__main__":
    main()
