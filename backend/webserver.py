"""The web process's HTTP server: waitress, guarded against slow and idle clients.

Issue 20: waitress alone stops accepting at 100 open connections and never times out a
request that trickles in, so ~100 sockets sending headers a byte at a time locked out
`/health` and every click. `web_server` keeps waitress (its request path is what the
latency figures measure) and adds a small guard over its own bookkeeping; see its
docstring for what and why, and the README's security section for what a deployment
behind a reverse proxy sets.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from squeezesam.backend.settings import Settings

_DEFAULTS = Settings()

log = logging.getLogger("squeezesam.webserver")


def web_server(
    app: Any,
    host: str,
    port: int,
    threads: int,
    connection_limit: int = _DEFAULTS.web_connection_limit,
    read_timeout: float = _DEFAULTS.web_request_read_timeout,
    max_request_bytes: int = _DEFAULTS.max_request_bytes,
) -> Any:
    """The app in waitress, a production WSGI server: a fixed pool of request threads
    and HTTP/1.1 keep-alive. Measured against werkzeug's development server (a thread
    and a connection per request), it answers a small POST ~0.4 ms sooner on this
    machine. `port` 0 picks a free port (`server.effective_port`).

    Slow and idle clients (issue 20): waitress alone stops accepting at 100 open
    connections, and a client that sends its headers a byte at a time keeps its
    connection for ever, so ~100 such sockets locked out `/health` and every click. Here
    (`GuardedServer`): poll() instead of select() (no 1024-descriptor ceiling), the
    descriptor limit raised to fit, a connection that has not sent its whole request within
    `read_timeout` s is closed, idle keep-alive connections after IDLE_TIMEOUT s, and past
    `connection_limit` open connections each new one closes the idlest or slowest one
    that is not being answered, so a real request always gets in. Chosen over a
    thread-per-connection or async server: the request path stays as measured, and the
    guard is a few lines over waitress's own bookkeeping.

    Bodies (issue 20, item 6): a Content-Length over `max_request_bytes` is answered 413
    as soon as the headers are in, before any of the body is read and before the app
    (auth included) sees the request; a chunked body is cut off with the same 413 once it
    grows past the limit. waitress's own errors (413, 400, 431) are JSON like the app's."""
    from waitress.adjustments import Adjustments
    from waitress.server import MultiSocketServer
    from waitress.task import ThreadedTaskDispatcher

    hard_limit = connection_limit + CONNECTION_HEADROOM
    _raise_file_limit(hard_limit + 64)
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="squeezesam",
        connection_limit=hard_limit,
        channel_timeout=IDLE_TIMEOUT,
        cleanup_interval=1,
        asyncore_use_poll=True,
        max_request_body_size=max_request_bytes + 1,  # waitress refuses >= its limit
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    server_map: dict = {}
    servers = [
        _guarded_server_class()(
            app,
            server_map,
            dispatcher=dispatcher,
            adj=adj,
            sockinfo=sockinfo,
            soft_limit=connection_limit,
            read_timeout=read_timeout,
        )
        for sockinfo in adj.listen
    ]
    if len(servers) == 1:
        return servers[0]
    listen = [(s.effective_host, s.effective_port) for s in servers]
    multi = MultiSocketServer(server_map, adj, listen, dispatcher)
    multi.effective_port = servers[0].effective_port
    return multi


IDLE_TIMEOUT = 60  # seconds an idle keep-alive connection stays open
CONNECTION_HEADROOM = 64  # connections past the soft limit, all of them being answered


def _raise_file_limit(needed: int) -> None:
    """The soft RLIMIT_NOFILE up to `needed` (within the hard limit): every connection is
    a descriptor, and running out of them fails accept() for everyone."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:  # not fatal: a lower ceiling
        log.warning("could not raise the open-file limit to %d: %s", needed, exc)


_GUARDED: list[type] = []


def _guarded_server_class() -> type:
    """waitress's TCP server with the slow/idle-client guard (built on first use, so
    importing this module does not import waitress)."""
    if _GUARDED:
        return _GUARDED[0]
    from waitress.channel import HTTPChannel
    from waitress.server import TcpWSGIServer
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        """waitress's own error answers (413 body too large, 400 bad framing, 431) in the
        app's one error shape `{"error": "...", "status": N}`."""

        def execute(self) -> None:
            error = self.request.error
            message = error.body
            if error.code == 413:
                limit = self.channel.adj.max_request_body_size - 1
                message = f"request body over {limit} bytes (MAX_REQUEST_BYTES)"
            body = json.dumps({"error": f"{error.reason}: {message}", "status": error.code})
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.response_headers.append(("X-Content-Type-Options", "nosniff"))
            self.set_close_on_finish()
            self.content_length = len(body.encode())
            self.write(body.encode())

    class GuardedChannel(HTTPChannel):
        error_task_class = JSONErrorTask

        read_started: float | None = None  # first byte of the request not yet complete
        _partial: object = None  # that request (pipelined data may start the next one)

        def received(self, data: bytes) -> bool:
            result = super().received(data)
            if self.request is None:  # nothing partial: complete, or nothing yet
                self.read_started = self._partial = None
            elif self.request is not self._partial:
                self.read_started, self._partial = time.time(), self.request
            return result

    class GuardedServer(TcpWSGIServer):
        channel_class = GuardedChannel

        def __init__(self, *args: Any, soft_limit: int, read_timeout: float, **kw: Any):
            self.soft_limit = soft_limit
            self.read_timeout = read_timeout
            super().__init__(*args, **kw)

        def maintenance(self, now: float) -> None:
            super().maintenance(now)  # idle keep-alive connections (channel_timeout)
            cutoff = time.time() - self.read_timeout
            for channel in list(self.active_channels.values()):
                started = getattr(channel, "read_started", None)
                if started is not None and started < cutoff and not channel.requests:
                    channel.will_close = True  # too slow to send one request

        def handle_accept(self) -> None:
            super().handle_accept()
            excess = len(self.active_channels) - self.soft_limit
            if excess > 0:
                for channel in self._victims(excess):
                    channel.handle_close()

        def _victims(self, count: int) -> list:
            """Connections it costs nothing to close: no request being answered, no
            answer being sent; the slowest sender or the longest idle first."""
            young = time.time() - 1.0  # just connected: its request is on the way
            idle = []
            for channel in self.active_channels.values():
                if channel.requests or channel.total_outbufs_len or not channel.connected:
                    continue
                if channel.creation_time > young:
                    continue
                started = getattr(channel, "read_started", None)
                # a partial request counts as idle since its first byte
                since = started if started is not None else channel.last_activity
                idle.append((since, id(channel), channel))
            idle.sort(key=lambda item: item[:2])
            return [channel for _, _, channel in idle[:count]]

    _GUARDED.append(GuardedServer)
    return GuardedServer
