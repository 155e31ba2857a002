"""What the service writes is its owner's only (issue 20, item 8).

`labels.db` (+ WAL), `masks/*.png` and the embedded Redis's append-only file (decoded
image pixels, job payloads) were 0644 in 0755 folders. A real `squeezesam serve` (web,
workers, embedded Redis) takes a click and an annotation webhook; then every file under
its data folder must be 0600-or-less and every folder 0700-or-less, while it runs and
after it stopped."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import requests
from PIL import Image

from squeezesam.backend.redis_conn import EmbeddedRedis

from .conftest import (
    LEGACY_TOKEN,
    click_body,
    click_until_served,
    free_port,
    keypoint,
    load_capture,
    upload_ref,
)


def open_to_others(root: Path) -> list[str]:
    """Paths under root that group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(root)} {stat.S_IMODE(mode):o}")
    return found


def test_serve_writes_owner_only_files_in_owner_only_folders(
    model_path, fake_ls, label_config, sample_images, tmp_path
):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # made before (as an older version would have): closed now
    data.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env |= {
        "SQUEEZESAM_DATA_DIR": str(data),
        "SQUEEZESAM_MODEL_PATH": str(model_path),
        "LABEL_STUDIO_URL": fake_ls.url,
        "LABEL_STUDIO_API_KEY": LEGACY_TOKEN,
    }
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "serve", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        image = sample_images[0]
        w, h = Image.open(image).size
        body = click_body(label_config, upload_ref(image), [keypoint(50, 50, w, h)])
        click_until_served(url, body)
        webhook = load_capture("62_*__ml_webhook.json")[0]["request"]["body"]
        answer = requests.post(f"{url}/webhook", json=webhook, timeout=30)
        assert answer.status_code in (200, 201), answer.text
        deadline = time.monotonic() + 20
        while not list(data.rglob("masks/**/*.png")) and time.monotonic() < deadline:
            time.sleep(0.3)
        written = {p.name for p in data.rglob("*")}
        assert "labels.db" in written and list(data.rglob("masks/**/*.png")), written
        assert any(name.startswith("appendonly") for name in written), written
        assert open_to_others(data) == []  # while running (WAL, socket, AOF included)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert open_to_others(data) == []


def test_embedded_redis_files_are_owner_only(tmp_path):
    """Whoever starts it (a test, a tool), not only `serve` with its umask."""
    folder = tmp_path / "redis"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    server = EmbeddedRedis(folder, watchdog=False)
    try:
        import redis

        client = redis.Redis.from_url(server.url)
        client.set("k", b"x" * 1000)
        client.close()
        time.sleep(1.2)  # appendfsync everysec
        assert any(p.name.startswith("appendonly") for p in folder.rglob("*"))
        assert open_to_others(folder) == []
    finally:
        server.close()
