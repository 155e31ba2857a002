"""Slow or idle clients cannot starve real requests (issue 20, item 1).

Real sockets against a real `squeezesam web` process: 105+ connections that send their
headers a byte at a time used to take the service offline (waitress stops accepting at
100 open connections and never times out a trickling request), so every `/health` and
every click timed out until they closed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import requests

from squeezesam.backend.app import create_app
from squeezesam.backend.serve import web_server
from squeezesam.backend.settings import Settings

from .conftest import free_port

SLOW = 150  # more than waitress's default connection_limit of 100


def wait_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/health", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.3)


class Slowloris:
    """`count` connections that each send a request's headers a line at a time and
    never finish them."""

    def __init__(self, port: int, count: int, interval: float = 0.5) -> None:
        self.port, self.interval = port, interval
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            self.socks.append(s)
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.stop.wait(self.interval):
            for s in self.socks:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass  # closed by the server: fine

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for s in self.socks:
            s.close()


@pytest.fixture()
def web_process(tmp_path):
    """`squeezesam web` with its default connection settings (no Redis: /health only)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["SQUEEZESAM_DATA_DIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "web", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd + ["--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url)
        yield port, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_health_answers_while_150_slow_clients_trickle_headers(web_process):
    port, url = web_process
    slow = Slowloris(port, SLOW)
    try:
        time.sleep(1.5)  # all connected and trickling
        for _ in range(5):
            started = time.monotonic()
            # a fresh connection each time, as a new annotator's browser would open
            response = requests.get(f"{url}/health", timeout=5, headers={"Connection": "close"})
            assert response.status_code == 200
            assert time.monotonic() - started < 2.0
    finally:
        slow.close()


@pytest.fixture()
def in_process_server(tmp_path):
    """The same server (web_server), in this process, with small limits to test them."""
    servers = []

    def start(**limits) -> tuple[int, str]:
        app = create_app(replace(Settings(), data_dir=str(tmp_path)))
        server = web_server(app, "127.0.0.1", 0, threads=4, **limits)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.effective_port}"
        wait_up(url, 10)
        return server.effective_port, url

    yield start
    for server in servers:
        server.close()


def test_a_request_not_sent_within_the_read_timeout_is_closed(in_process_server):
    port, _ = in_process_server(read_timeout=2.0)
    slow = Slowloris(port, 1, interval=0.3)  # keeps sending, never finishes
    try:
        s = slow.socks[0]
        s.settimeout(10)
        started = time.monotonic()
        try:
            data = s.recv(1024)
            while data:  # (a 4xx answer first would be fine too)
                data = s.recv(1024)
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert time.monotonic() - started < 8.0  # closed: 2 s + the 1 s check, not never
    except TimeoutError:
        pytest.fail("a connection trickling headers was still open after 10 s")
    finally:
        slow.close()


def test_past_the_connection_limit_idle_connections_make_room(in_process_server):
    port, url = in_process_server(connection_limit=20)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]  # say nothing
    slow = Slowloris(port, 20)
    try:
        time.sleep(1.5)  # older than the 1 s grace a fresh connection gets
        for _ in range(5):
            assert requests.get(f"{url}/health", timeout=5).status_code == 200
    finally:
        slow.close()
        for s in idle:
            s.close()


def test_a_keep_alive_client_is_not_cut_off_mid_request(in_process_server):
    """The guard closes slow senders, never a request that is being answered or a
    client that sends at normal speed over one kept-alive connection."""
    port, url = in_process_server(read_timeout=2.0, connection_limit=20)
    with requests.Session() as session:
        for _ in range(20):
            assert session.get(f"{url}/health", timeout=5).status_code == 200
            time.sleep(0.15)  # 3 s in all: longer than the read timeout
