"""`squeezesam serve` and `web` on a port something else already listens on (issue 21):
one line naming the port and a non-zero exit, instead of a web process restarted every
~2 s while the other process answers. The port is held by a real listening socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from squeezesam.backend.serve import EXIT_PORT_BUSY, Supervisor


@pytest.fixture
def held_port():
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
    holder.bind(("127.0.0.1", 0))
    holder.listen(8)
    yield holder.getsockname()[1]
    holder.close()


@pytest.mark.parametrize("command", ["serve", "web"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])  # 0.0.0.0: no auth warnings first
def test_a_busy_port_exits_non_zero_with_one_line_naming_it(
    command, host, held_port, model_path, tmp_path
):
    env = dict(os.environ, SQUEEZESAM_DATA_DIR=str(tmp_path / "data"),
               SQUEEZESAM_MODEL_PATH=str(model_path), REDIS_URL="")  # fmt: skip
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "WEBHOOK_SECRET"):
        env.pop(name, None)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "squeezesam.backend.cli", command, "--host", host,
         "--port", str(held_port)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == EXIT_PORT_BUSY, done.stderr
    assert time.monotonic() - t0 < 30  # no restart loop
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert f"port {held_port}" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "data" / "redis").exists() or command == "web"  # nothing started


def test_serve_stops_when_its_web_process_finds_the_port_taken_after_the_check():
    """The race: the port was free when serve checked it, taken when `web` binds."""
    exit_busy = [sys.executable, "-c", f"raise SystemExit({EXIT_PORT_BUSY})"]
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor = Supervisor([exit_busy, sleeper], dict(os.environ))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    t0 = time.monotonic()
    try:
        assert supervisor.run() == EXIT_PORT_BUSY
    finally:
        supervisor.stop()
        for number, handler in handlers.items():  # run() installed its own
            signal.signal(number, handler)
    assert time.monotonic() - t0 < 20
    assert all(child.poll() is not None for child in supervisor.children)
