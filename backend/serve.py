"""`squeezesam serve | web | worker`: run the service's processes.

`serve` is the one-command start: it brings up Redis (embedded unless REDIS_URL is
set), then the web process, N interactive workers, one preannotate worker, one train
worker and the training scheduler as subprocesses, and restarts any of them that dies
(a killed worker's job is retried by the other workers; see dispatch.py). Ctrl-C or
SIGTERM stops everything within docker stop's 10 s (supervisor.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys

from squeezesam.backend.settings import Settings
from squeezesam.backend.shutdown import STOP_GRACE, exit_within
from squeezesam.backend.supervisor import EXIT_PORT_BUSY, REDIS_GRACE, Supervisor
from squeezesam.backend.webserver import web_server

log = logging.getLogger("squeezesam.serve")


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


# --- what every service process does first --------------------------------------------

SERVICE_UMASK = 0o077  # files 0600, folders 0700: labels, masks, Redis's append-only file
_QUERY = re.compile(r"((?:[a-zA-Z][a-zA-Z0-9+.-]*://|/)[^\s'\"<>?#]*)\?[^\s'\"<>)\]]*")


def redact_queries(text: str) -> str:
    """Query strings out of a log line: `https://b.example/x.jpg?X-Amz-Signature=...`
    becomes `https://b.example/x.jpg?...` (presigned image URLs carry their signature
    there, and rq logs each job's arguments)."""
    return _QUERY.sub(r"\1?...", text)


_CALL = re.compile(r"^(\x1b\[[0-9;]*m)?([A-Za-z_][\w.]*)\(.*", re.S)


def _without_arguments(value: object) -> object:
    """rq's job description `pkg.jobs.segment_click(SegmentJob(image_ref='...', ...))`
    as `pkg.jobs.segment_click(...)`: the function, never its arguments."""
    if not isinstance(value, str):
        return value
    match = _CALL.match(value)
    if match is None:
        return value
    color = match.group(1) or ""
    return f"{color}{match.group(2)}(...)" + ("\x1b[39;49;00m" if color else "")


class RedactQueries(logging.Filter):
    """A handler filter: each record's message (and traceback) without query strings,
    and rq's job lines without the job's arguments (they start with the image reference,
    which may be a presigned URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("rq") and isinstance(record.args, tuple):
            record.args = tuple(_without_arguments(arg) for arg in record.args)
        message = record.getMessage()
        redacted = redact_queries(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_queries(logging.Formatter().formatException(record.exc_info))
        return True


def service_setup(command: str) -> Settings:
    """Settings (a bad or half-set one: one line on stderr, exit 1), owner-only files from
    here on (SERVICE_UMASK; children inherit it), the data folder closed to others, and
    log lines without query strings."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"squeezesam {command}: {exc}") from None
    os.umask(SERVICE_UMASK)
    data = settings.data_path
    try:
        if data.is_dir() and data.stat().st_uid == os.getuid():
            data.chmod(0o700)  # a data folder made before the umask: closed now
    except OSError as exc:
        log.warning("could not make %s private: %s", data, exc)
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in root.handlers:
        if not any(isinstance(f, RedactQueries) for f in handler.filters):
            handler.addFilter(RedactQueries())
    return settings


def warn_if_open(host: str, settings: Settings) -> None:
    """Say so when the service listens beyond this machine without its secrets."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return
    if not settings.basic_auth_enabled:
        log.warning(
            "listening on %s without BASIC_AUTH_USER/BASIC_AUTH_PASS: anyone who reaches "
            "this port can use the service and, through it, fetch images with the Label "
            "Studio token; set both, or --host 127.0.0.1 behind a proxy that authenticates",
            host,
        )
    if not settings.webhook_secret:
        log.warning(
            "listening on %s without WEBHOOK_SECRET: anyone who reaches this port can post "
            "annotations to the label store through /webhook",
            host,
        )


def cmd_web(args: argparse.Namespace) -> int:
    from squeezesam.backend.app import create_app

    settings = service_setup("web")
    check_port_free(args.host, args.port, "web")  # before any warning: one line on stderr
    warn_if_open(args.host, settings)
    server = web_server(
        create_app(settings),
        args.host,
        args.port,
        settings.web_threads,
        connection_limit=settings.web_connection_limit,
        read_timeout=settings.web_request_read_timeout,
        max_request_bytes=settings.max_request_bytes,
    )
    # SIGTERM (serve's supervisor, docker stop) ends waitress's loop like Ctrl-C, so the
    # process exits normally and the recorder writes its pending click records (atexit);
    # bounded (shutdown.py) for request threads still waiting on a job
    signal.signal(signal.SIGTERM, _stop_web)
    log.info("web on http://%s:%s (%d threads)", args.host, server.effective_port,
             settings.web_threads)  # fmt: skip
    server.run()
    return 0


def _stop_web(signum: int, frame: object) -> None:
    exit_within(STOP_GRACE, "web")
    sys.exit(0)


def cmd_worker(args: argparse.Namespace) -> int:
    from squeezesam.backend.queues import QUEUES
    from squeezesam.backend.worker import run_worker

    settings = service_setup("worker")
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise SystemExit(f"unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    run_worker(queues, settings, burst=args.burst)
    return 0


def check_port_free(host: str, port: int, command: str) -> None:
    """A port something else listens on: one line naming it and exit EXIT_PORT_BUSY,
    before anything starts (`serve` would otherwise restart its web process forever while
    the other process answers). Bound the way waitress binds (SO_REUSEADDR), then freed."""
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)  # fmt: skip
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        print(f"squeezesam {command}: port {port} on {host} is not free ({exc.strerror or exc}); "
              "stop what listens there or choose another --port", file=sys.stderr)  # fmt: skip
        raise SystemExit(EXIT_PORT_BUSY) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = service_setup("serve")
    check_port_free(args.host, args.port, "serve")  # before any warning: one line on stderr
    warn_if_open(args.host, settings)
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
    # training_job.py); it imports torch only inside its jobs
    commands += [me + ["worker", "--queues", "train"]]
    commands += [me + ["train-scheduler"]]  # TRAIN_MIN_NEW_LABELS every TRAIN_INTERVAL s
    supervisor = Supervisor(commands, env)
    try:
        code = supervisor.run()
    finally:
        supervisor.stop()  # bounded: within docker stop's 10 s (supervisor.py)
        if embedded is not None:
            embedded.close(timeout=REDIS_GRACE)
    return code
