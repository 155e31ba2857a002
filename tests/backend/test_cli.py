from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests
from PIL import Image

from squeezesam.backend.cli import build_parser
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store

from .conftest import (
    LEGACY_TOKEN,
    click_body,
    click_until_served,
    free_port,
    keypoint,
    upload_ref,
)


def test_commands_are_registered_by_modules():
    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "127.0.0.1", "--port", "9", "--workers", "3"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 9, 3) and args.func
    assert parser.parse_args(["worker", "--queues", "interactive,preannotate"]).func


def test_serve_alone_brings_up_redis_web_and_workers(
    model_path, fake_ls, label_config, sample_images, tmp_path
):
    """...and on SIGTERM stops cleanly: the web process exits normally, having written
    the click records its recorder still held (they are written after the answer)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "SQUEEZESAM_DATA_DIR": str(tmp_path / "data"),
        "SQUEEZESAM_MODEL_PATH": str(model_path),
        "LABEL_STUDIO_URL": fake_ls.url,
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
    }
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "serve", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=env)
    try:
        image = sample_images[0]
        w, h = Image.open(image).size
        body = click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h)])
        response = click_until_served(f"http://127.0.0.1:{port}", body)
        assert response.json()["results"][0]["result"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    store = Store.open(Settings(data_dir=str(tmp_path / "data")))
    try:
        assert [(c["x"], c["y"]) for c in store.served.clicks_for_task(1)] == [(50.0, 50.0)]
    finally:
        store.close()


def test_web_stops_cleanly_on_sigterm(settings, tmp_path):
    """SIGTERM (serve's supervisor, docker stop) ends `squeezesam web` with exit code 0,
    not death by signal, so its exit handlers (the recorder's pending writes) run."""
    port = free_port()
    env = os.environ | settings.to_env() | {"SQUEEZESAM_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "web", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "web did not come up"
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
