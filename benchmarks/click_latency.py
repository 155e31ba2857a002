"""Click latency: one click through HTTP + queue + worker, next to the model called directly.

    python benchmarks/click_latency.py [--clicks 200] [--model PATH] [--threads 0] [--gap-ms 200]

Starts an embedded Redis, one warm interactive worker process and the web process
(`squeezesam web`, as `squeezesam serve` runs them: separate processes), then this
process plays Label Studio and sends N interactive `/predict` calls on real images from
the shared data sets (read from disk by a local file server standing in for Label
Studio, each image clicked several times as an annotator would: the first click
downloads and caches it). The direct baseline runs the same clicks in this process
through `jobs.segment` on already prepared images, plus the RLE encoding: what a worker
computes, without HTTP, Redis and queueing. Both use the same thread count.

Both paths wait `--gap-ms` between clicks (an annotator clicks a few times a second at
most), so each click is measured on an otherwise idle service, as an annotator meets
it; what the web process does after answering (the label store's click records) then
runs between clicks, as it does in use. `--gap-ms 0` fires clicks back to back.
Prints p50/p95 of both and the overhead ratio (service / direct), and the floor under
any such service on this machine, measured on the same processes with the same pacing: an
empty HTTP request (`GET /health`) plus a job that does nothing (`jobs.ping`) through the
same queue and worker, with the same early reply.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import redis
import requests
from PIL import Image

from squeezesam.backend.dispatch import Dispatcher
from squeezesam.backend.images import decode
from squeezesam.backend.jobs import ping, segment
from squeezesam.backend.labelstudio import (
    Prompt,
    brush_result,
    parse_label_config,
)
from squeezesam.backend.queues import alive_workers
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.settings import Settings
from squeezesam.backend.worker import load_predictor
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


def direct(model: Path, threads: int, images: list[Path], points, gap: float) -> list[float]:
    # the workers' predictor: focus view and zoom-in as the environment sets them
    predictor = load_predictor(model, replace(Settings.from_env(), model_threads=threads))
    config = parse_label_config(CONFIG)
    prepared = {p: predictor.prepare(decode(p.read_bytes(), 10**9)) for p in images}
    times = []
    for i, (x, y) in enumerate(points):
        image = images[i // CLICKS_PER_IMAGE]
        time.sleep(gap)
        t0 = time.perf_counter()
        mask, predicted = segment(predictor, prepared[image], Prompt(((x, y, True),), None, None))
        brush_result(mask, "Person", predicted.score, config)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def through_service(
    model: Path, threads: int, images: list[Path], points, gap: float
) -> tuple[list[float], list[float], list[float]]:
    """-> (click times, empty-request times, no-op job times), in ms."""
    root = images[0].parent.parent.parent
    files = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        partial(_QuietFiles, directory=str(root)),
    )
    threading.Thread(target=files.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{files.server_address[1]}"
    server = EmbeddedRedis()
    # From the environment like the direct path's predictor, so that both paths run the
    # same inference options (SQUEEZESAM_FLIP_AVERAGE=0 etc. reach the worker too).
    settings = replace(
        Settings.from_env(),
        redis_url=server.url,
        model_path=str(model),
        model_threads=threads,
        image_allowed_hosts=(host,),
    )
    data_dir = tempfile.TemporaryDirectory()  # the web process's label store
    env = os.environ | settings.to_env() | {"SQUEEZESAM_DATA_DIR": data_dir.name}
    me = [sys.executable, "-m", "squeezesam.backend.cli"]
    worker = subprocess.Popen(me + ["worker", "--queues", "interactive"], env=env)
    port = _free_port()
    web = subprocess.Popen(me + ["web", "--host", "127.0.0.1", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}/predict"
    try:
        connection = redis.Redis.from_url(server.url)
        session = requests.Session()
        while not alive_workers(connection, "interactive") or not _up(session, port):
            time.sleep(0.2)
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
            time.sleep(gap)
            t0 = time.perf_counter()
            response = session.post(url, json=body, timeout=60)
            times.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
        return (
            times,
            _floor_http(session, port, len(points), gap),
            _floor_queue(connection, settings, len(points), gap),
        )
    finally:
        for child in (web, worker):
            child.terminate()
            child.wait(10)
        server.close()
        files.shutdown()
        data_dir.cleanup()


def _paced_ms(n: int, gap: float, call: Callable[[], object]) -> list[float]:
    """Time `call` n times, `gap` seconds apart (as the clicks are paced), in ms."""
    times = []
    for _ in range(n):
        time.sleep(gap)
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def _floor_http(session: requests.Session, port: int, n: int, gap: float) -> list[float]:
    url = f"http://127.0.0.1:{port}/health"
    return _paced_ms(n, gap, lambda: session.get(url, timeout=10).raise_for_status())


def _floor_queue(connection: redis.Redis, settings: Settings, n: int, gap: float) -> list[float]:
    dispatcher = Dispatcher(connection, settings)

    def no_op_job() -> None:
        outcome = dispatcher.run("interactive", ping, None, 10)
        if outcome.status != 200:
            raise RuntimeError(f"no-op job failed: {outcome.error}")

    return _paced_ms(n, gap, no_op_job)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(session: requests.Session, port: int) -> bool:
    try:
        return session.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


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
    parser.add_argument("--gap-ms", type=float, default=200, help="pause between clicks")
    args = parser.parse_args()
    threads = args.threads or (os.cpu_count() or 1)
    images = shared_images(-(-args.clicks // CLICKS_PER_IMAGE))
    points = click_points(args.clicks)
    version = Predictor(args.model, threads=1).version
    print(f"model {args.model} ({version}), {args.clicks} clicks on {len(images)} images, "
          f"{threads} threads, {args.gap_ms:g} ms between clicks")  # fmt: skip
    base = direct(args.model, threads, images, points, args.gap_ms / 1000)
    served, http_floor, queue_floor = through_service(
        args.model, threads, images, points, args.gap_ms / 1000
    )
    (b50, b95), (s50, s95) = percentiles(base), percentiles(served)
    (h50, _), (q50, _) = percentiles(http_floor), percentiles(queue_floor)
    print(f"direct  (model + clean + RLE): p50 {b50:7.1f} ms   p95 {b95:7.1f} ms")
    print(f"service (HTTP + queue + worker): p50 {s50:7.1f} ms   p95 {s95:7.1f} ms")
    print(f"overhead ratio service/direct: p50 {s50 / b50:.3f}   p95 {s95 / b95:.3f}")
    print(f"overhead: p50 {s50 - b50:.1f} ms; floor: empty request p50 {h50:.1f} ms + "
          f"no-op job p50 {q50:.1f} ms = {h50 + q50:.1f} ms "
          f"(ratio (direct + floor)/direct {(b50 + h50 + q50) / b50:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
