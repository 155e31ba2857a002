"""The Flask app: one `Services` object, the ML backend over it, blueprints, guards.

request -> route (routes/) -> SqueezeSAMBackend (model.py) -> queue (queues.py,
dispatch.py) -> worker (worker.py, jobs.py) -> model (models/predictor.py) -> encode
(brush RLE, labelstudio.py) -> response. Every error is JSON `{"error": "...",
"status": N}` naming the problem; the app keeps serving after any of them. Every request
leaves one access-log line (`squeezesam.access`: method, route pattern, status, ms).

Guards: HTTP Basic auth (BASIC_AUTH_USER/BASIC_AUTH_PASS) on every endpoint but
OPEN_ENDPOINTS: `/health` (also at `/`), and `/webhook`, which has its own secret (Label Studio's
auto-created webhook sends no Basic auth). With WEBHOOK_SECRET set, `/webhook` takes either
that secret's header or the Basic auth pair: Label Studio 1.23 sends Start Training
(`START_TRAINING`) through its ML connector (`ml/api_connector.py`, `MLApi.train`), with
the model's Basic auth and never the webhook's headers (`_webhook_auth`).
"""

from __future__ import annotations

import logging
import time

import redis
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from squeezesam.backend.auth import FailureLimiter, basic_auth_ok, webhook_secret_ok
from squeezesam.backend.dashboard import init_dashboard
from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.metrics import register_metrics
from squeezesam.backend.model import SqueezeSAMBackend
from squeezesam.backend.routes import BACKEND, SERVICES, admin, error, predict, webhook
from squeezesam.backend.routes.webhook import WEBHOOK_SECRET_HEADER
from squeezesam.backend.services import ServiceError, Services
from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("squeezesam.access")

OPEN_ENDPOINTS = {"predict.health", "webhook.webhook"}  # webhook: its own secret
WEBHOOK_ENDPOINT = "webhook.webhook"
REDIS_RETRY_AFTER = 2  # seconds: a Redis restart (embedded or not) takes about that


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("squeezesam")
    app.config["SETTINGS"] = settings
    services = app.extensions[SERVICES] = Services(settings)
    app.extensions[BACKEND] = SqueezeSAMBackend(services)
    app.extensions["squeezesam.recorder"] = services.recorder  # tests flush it
    services.open_store_early()
    for blueprint in (predict.bp, webhook.bp, admin.bp):
        app.register_blueprint(blueprint)
    init_dashboard(app)  # /dashboard (+ CSV, JSON), behind the same Basic auth guard
    register_metrics(app)  # /metrics, Prometheus text format
    _add_guards(app, settings)
    return app


def _add_guards(app: Flask, settings: Settings) -> None:
    """Basic auth before every request, JSON for every error, Server-Timing after."""

    limiter = FailureLimiter(settings.auth_failures_per_minute)
    # werkzeug also stops a chunked body (no Content-Length) at the limit: a 413 on read
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    def guard() -> Response | None:
        g.started = time.perf_counter()
        too_large = _too_large(settings.max_request_bytes)  # before auth, body unread
        if too_large is not None:
            return too_large
        if request.endpoint == WEBHOOK_ENDPOINT:
            return _webhook_auth(settings, limiter)
        if settings.basic_auth_enabled and request.endpoint not in OPEN_ENDPOINTS:
            return _basic_auth(settings, limiter)
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(PayloadError)
    @app.errorhandler(ServiceError)
    def known_error(exc: PayloadError | ServiceError) -> Response:
        return error(str(exc), exc.status)

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(redis.BusyLoadingError)
    def redis_gap(exc: redis.RedisError) -> Response:
        # Redis restarting or briefly out of reach: the client should simply retry
        log.warning("Redis unavailable on %s: %s", request.path, type(exc).__name__)
        response = error(f"Redis is not reachable right now ({type(exc).__name__})", 503)
        response.headers["Retry-After"] = str(REDIS_RETRY_AFTER)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return error(f"internal error: {type(exc).__name__}", 500)

    @app.after_request
    def timing(response: Response) -> Response:
        if "started" in g:
            elapsed = (time.perf_counter() - g.started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
            _access_line(response.status_code, elapsed)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def _too_large(limit: int) -> Response | None:
    """413 for a declared body over MAX_REQUEST_BYTES, before anything reads it (waitress
    answers the same before the app sees the request: webserver.py)."""
    length = request.content_length
    if length is not None and length > limit:
        response = error(
            f"request body of {length} bytes: at most {limit} (MAX_REQUEST_BYTES)", 413
        )
        response.headers["Connection"] = "close"
        return response
    return None


def _basic_auth(settings: Settings, limiter: FailureLimiter) -> Response | None:
    """None when the credentials are right; 401, or 429 past AUTH_FAILURES_PER_MINUTE
    failures of this client address."""
    checked = _check_basic(settings, limiter)
    if checked is not False:
        return checked
    response = error("HTTP Basic authentication required", 401)
    response.headers["WWW-Authenticate"] = 'Basic realm="squeezesam"'
    return response


def _check_basic(settings: Settings, limiter: FailureLimiter) -> Response | None | bool:
    """The Basic pair of this request, rate limited per client address: a 429 while the
    address has spent its failed logins, None when the pair is right, False when it is
    wrong (counted as a failure)."""
    address = request.remote_addr or ""
    limited = _limited(limiter, address)
    if limited is not None:
        return limited
    auth = request.authorization  # any bytes: a 4xx, never a 500 (auth.py)
    if basic_auth_ok(auth, settings.basic_auth_user, settings.basic_auth_pass):
        return None
    limiter.failed(address)
    return False


def _limited(limiter: FailureLimiter, address: str) -> Response | None:
    """429 with Retry-After while `address` has spent its failed logins."""
    wait = limiter.retry_after(address)
    if not wait:
        return None
    response = error(f"too many failed logins from {address}: retry in {wait} s", 429)
    response.headers["Retry-After"] = str(wait)
    return response


def _webhook_auth(settings: Settings, limiter: FailureLimiter) -> Response | None:
    """`/webhook` with WEBHOOK_SECRET set: None for the right `X-Webhook-Secret` header
    (Label Studio's project webhook: annotations, new tasks) or, with Basic auth
    configured, the right Basic pair (its ML connector: Start Training, which carries the
    model's Basic auth and no webhook header); else 403. Wrong Basic credentials count
    against the client's failed-login limit like on every other route (429 once spent,
    also for a right pair); a right header is never limited."""
    secret = settings.webhook_secret
    if not secret:
        return None  # not configured: open (serve warns when it listens beyond loopback)
    if webhook_secret_ok(request.headers.get(WEBHOOK_SECRET_HEADER), secret):
        return None
    if settings.basic_auth_enabled and "Authorization" in request.headers:
        checked = _check_basic(settings, limiter)
        if checked is not False:
            return checked
    return error(f"missing or wrong {WEBHOOK_SECRET_HEADER} header (or Basic auth)", 403)


def _access_line(status: int, elapsed_ms: float) -> None:
    """One line per request: method, route pattern (`/preannotate/<int:project>`, never
    the path itself, nor its query string: no ids, no tokens), status, milliseconds."""
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    access_log.info("%s %s %d %.1f ms", request.method, route, status, elapsed_ms)
