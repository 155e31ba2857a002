"""Load test: N annotators clicking on different images against `squeezesam serve`.

    python benchmarks/load.py                      # 20 annotators, 2 workers, 300 s
    python benchmarks/load.py --duration 120       # shorter

Starts a stand-in Label Studio file server on 127.0.0.1 (images from ../shared/data, or
SQUEEZESAM_SHARED_DATA, served under /data/upload/ with token auth like Label Studio) and
`squeezesam serve --workers W` on a free loopback port, with its own embedded Redis
and data directory. Each click is a real interactive `/predict` body shaped like capture
56 (a positive keypoint, the project's labeling config). Phase 1: one user alone for
--single-clicks clicks (the single-user p95). Phase 2: N users, each on its own images,
think time lognormal (median --think s). Prints throughput, p50/p95/p99, errors, the
p95 ratio to the single-user p95 and the RSS of the serve process tree per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = (
    '<View><Image name="image" value="$image" zoom="true"/><BrushLabels name="tag" '
    'toName="image"><Label value="Person"/><Label value="Pet"/></BrushLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Person"/>'
    '<Label value="Pet"/></KeyPointLabels></View>'
)


def shared_data() -> Path:
    return Path(os.environ.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))


class Files(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images


class _Handler(BaseHTTPRequestHandler):
    server: Files

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            body, status = b'{"detail": "no auth"}', 401
        elif name in self.server.images:
            body, status = self.server.images[name].read_bytes(), 200
        else:
            body, status = b'{"detail": "not found"}', 404
        self.send_response(status)
        self.send_header("Content-Type", "image/jpeg" if status == 200 else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def click_body(name: str, size: tuple[int, int], task_id: int, rng: random.Random) -> dict:
    w, h = size
    region = {
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"x": rng.uniform(30, 70), "y": rng.uniform(30, 70), "width": 0.3,
                  "keypointlabels": ["Person"]},
        "is_positive": True, "id": f"kp{rng.randrange(10**6)}", "from_name": "kp",
        "to_name": "image", "type": "keypointlabels", "origin": "manual",
    }  # fmt: skip
    task = {"id": task_id, "data": {"image": f"/data/upload/1/{name}"}, "annotations": [],
            "predictions": [], "drafts": []}  # fmt: skip
    params = {"login": None, "password": None, "context": {"result": [region]}}
    return {"tasks": [task], "project": "1.1", "label_config": CONFIG, "params": params}


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of pid and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(parents.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of the N-user phase")
    ap.add_argument("--think", type=float, default=3.0, help="median think time (s)")
    ap.add_argument("--think-sigma", type=float, default=0.5, help="lognormal sigma")
    ap.add_argument("--single-clicks", type=int, default=40)
    ap.add_argument("--images-per-user", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    paths = sorted(shared_data().glob("*/images/*.jpg"))
    if len(paths) < args.users * args.images_per_user + 1:
        raise SystemExit(f"not enough images under {shared_data()}")
    rng.shuffle(paths)
    paths = paths[: args.users * args.images_per_user + 1]
    names = {f"{i:04d}-{p.name}": p for i, p in enumerate(paths)}
    sizes = {n: image_size(p) for n, p in names.items()}
    files = Files(names)
    threading.Thread(target=files.serve_forever, daemon=True).start()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="squeezesam-load-")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env |= {
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{files.server_address[1]}",
        "LABEL_STUDIO_API_KEY": TOKEN,
        "SQUEEZESAM_DATA_DIR": data_dir,
        "TRAIN_MIN_NEW_LABELS": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = open(Path(data_dir) / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [sys.executable, "-m", "squeezesam.backend.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(args.workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/predict"
    all_names = list(names)
    try:
        # ready: one click answered
        t0 = time.monotonic()
        while True:
            if serve.poll() is not None or time.monotonic() - t0 > 300:
                raise SystemExit(f"serve did not come up; log in {data_dir}/serve.log")
            try:
                body = click_body(all_names[-1], sizes[all_names[-1]], 0, rng)
                if requests.post(url, json=body, timeout=60).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        print(f"serve ready after {time.monotonic() - t0:.0f} s ({args.workers} interactive "
              f"workers, {os.cpu_count()} CPUs)", flush=True)  # fmt: skip

        # phase 1: one user alone (each image clicked several times, like an annotator)
        single: list[float] = []
        session = requests.Session()
        for i in range(args.single_clicks):
            name = all_names[(i // 4) % len(all_names)]
            t = time.perf_counter()
            r = session.post(url, json=click_body(name, sizes[name], i, rng), timeout=60)
            single.append(time.perf_counter() - t)
            if r.status_code != 200:
                print(f"single-user click error {r.status_code}: {r.text[:200]}")
        single_p95 = pct(single, 95)
        print(f"single user: {len(single)} clicks, p50 {pct(single, 50) * 1000:.0f} ms, "
              f"p95 {single_p95 * 1000:.0f} ms", flush=True)  # fmt: skip

        # phase 2: N annotators
        lat: list[tuple[float, float]] = []  # (time since start, latency)
        errors: list[str] = []
        rss: list[tuple[float, int]] = []
        stop = threading.Event()
        start = time.monotonic()

        def annotator(u: int) -> None:
            mine = all_names[u * args.images_per_user : (u + 1) * args.images_per_user]
            urng = random.Random(args.seed * 1000 + u)
            s = requests.Session()
            time.sleep(urng.uniform(0, args.think))  # not all at once
            n = 0
            while not stop.is_set():
                name = mine[(n // urng.randint(2, 6)) % len(mine)]
                t = time.perf_counter()
                try:
                    r = s.post(url, json=click_body(name, sizes[name], u, urng), timeout=60)
                    ok = r.status_code == 200 and r.json()["results"][0]["result"] is not None
                    if not ok:
                        errors.append(f"{r.status_code}: {r.text[:120]}")
                except (requests.RequestException, ValueError, KeyError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                lat.append((time.monotonic() - start, time.perf_counter() - t))
                n += 1
                stop.wait(urng.lognormvariate(0.0, args.think_sigma) * args.think)

        threads = [threading.Thread(target=annotator, args=(u,), daemon=True)
                   for u in range(args.users)]  # fmt: skip
        for t in threads:
            t.start()
        while time.monotonic() - start < args.duration:
            rss.append((time.monotonic() - start, tree_rss(serve.pid)))
            time.sleep(5)
        stop.set()
        for t in threads:
            t.join(70)
        elapsed = time.monotonic() - start
        values = [v for _, v in lat]
        p95 = pct(values, 95)
        first = [b for t, b in rss if t < 60] or [rss[0][1]]
        last = [b for t, b in rss if t >= elapsed - 60] or [rss[-1][1]]
        result = {
            "users": args.users, "workers": args.workers, "duration_s": round(elapsed, 1),
            "clicks": len(values), "throughput_per_s": round(len(values) / elapsed, 2),
            "p50_ms": round(pct(values, 50) * 1000), "p95_ms": round(p95 * 1000),
            "p99_ms": round(pct(values, 99) * 1000), "max_ms": round(max(values) * 1000),
            "errors": len(errors), "single_user_p95_ms": round(single_p95 * 1000),
            "p95_ratio": round(p95 / single_p95, 2),
            "rss_first_minute_mb": round(statistics.mean(first) / 2**20),
            "rss_last_minute_mb": round(statistics.mean(last) / 2**20),
            "rss_max_mb": round(max(b for _, b in rss) / 2**20),
            "cpus": os.cpu_count(),
        }  # fmt: skip
        print(
            f"{args.users} users: {len(values)} clicks in {elapsed:.0f} s = "
            f"{result['throughput_per_s']}/s; p50 {result['p50_ms']} ms, p95 "
            f"{result['p95_ms']} ms, p99 {result['p99_ms']} ms; errors {len(errors)}"
        )
        print(f"p95 ratio to single user: {result['p95_ratio']} (goal <= 2)")
        print(
            f"RSS of the serve tree: first minute {result['rss_first_minute_mb']} MB, "
            f"last minute {result['rss_last_minute_mb']} MB, max {result['rss_max_mb']} MB"
        )
        for e in sorted(set(errors))[:5]:
            print("  error:", e)
        print(json.dumps(result))
        return 0 if not errors else 1
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
        files.shutdown()


if __name__ == "__main__":
    sys.exit(main())
