"""`squeezesam serve | web | worker`: run the service's processes.

`serve` is the one-command start: it brings up Redis (embedded unless REDIS_URL is
set), then the web process, N interactive workers, one preannotate worker, one train
worker and the training scheduler as subprocesses, and restarts any of them that dies
(a killed worker's job is retried by the other workers; see dispatch.py). Ctrl-C or
SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from squeezesam.backend.settings import Settings

log = logging.getLogger("squeezesam.serve")

RESTART_DELAY = 1.0  # seconds before restarting a dead child (no busy crash loop)


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="web + Redis + workers, all in one")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1, help="interactive workers (default 1)")
    serve.set_defaults(func=cmd_serve)

    web = subparsers.add_parser("web", help="only the web process (needs REDIS_URL)")
    web.add_argument("--host", default="0.0.0.0")
    web.add_argument("--port", type=int, default=9090)
    web.set_defaults(func=cmd_web)

    worker = subparsers.add_parser("worker", help="one warm worker (needs REDIS_URL)")
    worker.add_argument(
        "--queues", default="interactive", help="comma-separated: interactive,preannotate,train"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(func=cmd_worker)


def web_server(app: Any, host: str, port: int, threads: int) -> Any:
    """The app in waitress, a production WSGI server: a fixed pool of request threads
    and HTTP/1.1 keep-alive. Measured against werkzeug's development server (a thread
    and a connection per request), it answers a small POST ~0.4 ms sooner on this
    machine. `port` 0 picks a free port (`server.effective_port`)."""
    from waitress.server import create_server

    return create_server(app, host=host, port=port, threads=threads, ident="squeezesam")


def cmd_web(args: argparse.Namespace) -> int:
    from squeezesam.backend.app import create_app

    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level)
    server = web_server(create_app(settings), args.host, args.port, settings.web_threads)
    # SIGTERM (serve's supervisor, docker stop) ends waitress's loop like Ctrl-C, so the
    # process exits normally and the recorder writes its pending click records (atexit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("web on http://%s:%s (%d threads)", args.host, server.effective_port,
             settings.web_threads)  # fmt: skip
    server.run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from squeezesam.backend.queues import QUEUES
    from squeezesam.backend.worker import run_worker

    settings = Settings.from_env()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SystemExit(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    run_worker(queues, settings, burst=args.burst)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logging.getLogger().setLevel(settings.log_level)
    if not settings.model_file.is_file():
        raise SystemExit(f"model file not found: {settings.model_file} (SQUEEZESAM_MODEL_PATH)")
    if not settings.label_studio_url:
        log.warning("LABEL_STUDIO_URL is not set: only absolute allowlisted image URLs work")
    env = dict(os.environ)
    embedded = None
    if not settings.redis_url:
        from squeezesam.backend.redis_conn import EmbeddedRedis

        # under the data dir (not a temp dir): queues and caches survive a restart of serve
        embedded = EmbeddedRedis(settings.data_path / "redis")
        env["REDIS_URL"] = embedded.url
        log.info("embedded Redis at %s", embedded.url)
    if not settings.model_threads:
        # share the cores between the interactive workers (measured faster than
        # oversubscribing); the preannotate worker gets the same share
        env["SQUEEZESAM_MODEL_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    me = [sys.executable, "-m", "squeezesam.backend.cli"]
    commands = [me + ["web", "--host", args.host, "--port", str(args.port)]]
    commands += [me + ["worker", "--queues", "interactive"]] * max(1, args.workers)
    commands += [me + ["worker", "--queues", "preannotate"]]
    # exactly one train worker: fine-tuning runs one at a time (plus the lock in
    # training.py); it imports torch only inside its jobs
    commands += [me + ["worker", "--queues", "train"]]
    commands += [me + ["train-scheduler"]]  # TRAIN_MIN_NEW_LABELS every TRAIN_INTERVAL s
    supervisor = Supervisor(commands, env)
    try:
        supervisor.run()
    finally:
        supervisor.stop()
        if embedded is not None:
            embedded.close()
    return 0


class Supervisor:
    """Starts the children, restarts the ones that die, stops them all on a signal."""

    def __init__(self, commands: list[list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.children: list[subprocess.Popen | None] = [None] * len(commands)
        self.stopping = False

    def _start(self, i: int) -> None:
        self.children[i] = subprocess.Popen(self.commands[i], env=self.env)
        log.info("started %s (pid %d)", " ".join(self.commands[i][3:]), self.children[i].pid)

    def run(self) -> None:
        def stop(signum, _frame):
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for i in range(len(self.commands)):
            self._start(i)
        while not self.stopping:
            time.sleep(0.2)
            for i, child in enumerate(self.children):
                if child is not None and child.poll() is not None and not self.stopping:
                    log.warning("%s exited with %s: restarting", child.args[3], child.returncode)
                    time.sleep(RESTART_DELAY)
                    self._start(i)

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            if child is not None and child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in self.children:
            if child is None:
                continue
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
