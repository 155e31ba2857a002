"""The Flask app: one `Services` object, the ML backend over it, blueprints, guards.

request -> route (routes/) -> SqueezeSAMBackend (model.py) -> queue (queues.py,
dispatch.py) -> worker (worker.py, jobs.py) -> model (models/predictor.py) -> encode
(brush RLE, labelstudio.py) -> response. Every error is JSON `{"error": "...",
"status": N}` naming the problem; the app keeps serving after any of them. Every request
leaves one access-log line (`squeezesam.access`: method, route pattern, status, ms).

Guards: HTTP Basic auth (BASIC_AUTH_USER/BASIC_AUTH_PASS) on every endpoint but
OPEN_ENDPOINTS: `/health` (also at `/`), and `/webhook`, which has its own secret (Label Studio's
auto-created webhook sends no Basic auth).
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from squeezesam.backend.auth import basic_auth_ok
from squeezesam.backend.dashboard import init_dashboard
from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.metrics import register_metrics
from squeezesam.backend.model import SqueezeSAMBackend
from squeezesam.backend.routes import BACKEND, SERVICES, admin, error, predict, webhook
from squeezesam.backend.services import ServiceError, Services
from squeezesam.backend.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("squeezesam.access")

OPEN_ENDPOINTS = {"predict.health", "webhook.webhook"}  # webhook: its own secret


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

    @app.before_request
    def guard() -> Response | None:
        g.started = time.perf_counter()
        if settings.basic_auth_enabled and request.endpoint not in OPEN_ENDPOINTS:
            auth = request.authorization  # any bytes: a 401, never a 500 (auth.py)
            ok = basic_auth_ok(auth, settings.basic_auth_user, settings.basic_auth_pass)
            if not ok:
                response = error("HTTP Basic authentication required", 401)
                response.headers["WWW-Authenticate"] = 'Basic realm="squeezesam"'
                return response
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(PayloadError)
    @app.errorhandler(ServiceError)
    def known_error(exc: PayloadError | ServiceError) -> Response:
        return error(str(exc), exc.status)

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
        return response


def _access_line(status: int, elapsed_ms: float) -> None:
    """One line per request: method, route pattern (`/preannotate/<int:project>`, never
    the path itself, nor its query string: no ids, no tokens), status, milliseconds."""
    route = request.url_rule.rule if request.url_rule is not None else "(no route)"
    access_log.info("%s %s %d %.1f ms", request.method, route, status, elapsed_ms)
