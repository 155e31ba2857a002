"""The Flask app: Label Studio's ML-backend protocol, routes only.

request -> parse (labelstudio.py) -> queue (dispatch.py) -> worker (jobs.py) -> response.
Every error is JSON `{"error": "...", "status": N}` naming the problem; the app keeps
serving after any of them.

Bulk `/predict` (no context): one job per task on `preannotate`. Label Studio stores
nothing at all if the answer is an error, so a bad task (no image, unreachable or
corrupt image, timeout) gets an empty prediction `{"result": [], "score": 0.0,
"model_version": ..., "error": "..."}` and the good tasks keep their results. Label
Studio stores the empty one too (and skips the task on the next Retrieve Predictions
with the same model version; delete its predictions to retry).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import jobs
from .dispatch import Dispatcher
from .labelstudio import PayloadError, parse_context, parse_label_config, prediction, task_image
from .redis_conn import connect
from .settings import Settings
from .worker import model_version

log = logging.getLogger(__name__)

MODEL_CLASS = "SqueezeSAM"
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
OPEN_ENDPOINTS = {"health", "webhook"}  # webhook has its own secret (LS sends no basic auth)
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"}


class ServiceError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("squeezesam")
    app.config["SETTINGS"] = settings
    state: dict[str, Dispatcher] = {}

    def dispatcher() -> Dispatcher:
        if "d" not in state:  # connect on first use: /health works without Redis
            try:
                state["d"] = Dispatcher(connect(settings), settings)
            except RuntimeError as exc:
                raise ServiceError(str(exc), 503) from None
        return state["d"]

    def version() -> str:
        try:
            return model_version(settings)
        except FileNotFoundError:
            raise ServiceError(f"model file not found: {settings.model_path}", 503) from None

    # --- guards and errors -------------------------------------------------------------

    @app.before_request
    def guard() -> Response | None:
        g.started = time.perf_counter()
        if settings.basic_auth_enabled and request.endpoint not in OPEN_ENDPOINTS:
            auth = request.authorization
            ok = (
                auth is not None
                and auth.type == "basic"
                and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
                and hmac.compare_digest(auth.password or "", settings.basic_auth_pass)
            )
            if not ok:
                response = _error("HTTP Basic authentication required", 401)
                response.headers["WWW-Authenticate"] = 'Basic realm="squeezesam"'
                return response
        return None

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(PayloadError)
    @app.errorhandler(ServiceError)
    def known_error(exc: PayloadError | ServiceError) -> Response:
        return _error(str(exc), exc.status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.path)
        return _error(f"internal error: {type(exc).__name__}", 500)

    # --- routes --------------------------------------------------------------------------

    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class=MODEL_CLASS)

    @app.get("/versions")
    def versions() -> Response:
        current = version()
        return jsonify(versions=[current], model_version=current)

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        parse_label_config(body.get("schema"))  # an unsupported config fails here, clearly
        return jsonify(model_version=version())

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise PayloadError("'tasks' must be a non-empty list", 422)
        config = parse_label_config(body.get("label_config"))
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if context:
            return _interactive(tasks, context, config)
        return _bulk(tasks, config)

    def _interactive(tasks: list, context: Any, config) -> Response:
        if len(tasks) != 1:
            raise PayloadError(f"an interactive request carries 1 task, got {len(tasks)}", 422)
        spec = jobs.ClickJob(
            task_image(tasks[0], config).ref, parse_context(context, config), config
        )
        outcome = dispatcher().run(
            "interactive", jobs.segment_click, spec, settings.interactive_timeout
        )
        if not outcome.ok:
            raise ServiceError(outcome.error, outcome.status)
        return _results_response([outcome.body])

    def _bulk(tasks: list, config) -> Response:
        d = dispatcher()
        current = version()
        deadline = time.monotonic() + settings.preannotate_timeout
        pending: list[Any] = []
        for task in tasks:  # enqueue all first: the workers start while we wait
            try:
                spec = jobs.TaskJob(task_image(task, config).ref, config)
                pending.append(
                    d.submit(
                        "preannotate", jobs.preannotate_task, spec, settings.preannotate_timeout
                    )
                )
            except PayloadError as exc:
                pending.append(exc)
        bodies = []
        for task, item in zip(tasks, pending, strict=True):
            outcome = (
                jobs.Outcome(item.status, error=str(item))
                if isinstance(item, PayloadError)
                else d.wait(item, deadline)
            )
            if outcome.ok:
                bodies.append(outcome.body)
            else:
                task_id = task.get("id") if isinstance(task, dict) else None
                log.warning("task %s: %s", task_id, outcome.error)
                empty = prediction([], 0.0, current, error=outcome.error)
                bodies.append(_dumps(empty))
        return _results_response(bodies)

    @app.post("/webhook")
    def webhook() -> Response:
        if settings.webhook_secret:
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if not hmac.compare_digest(given, settings.webhook_secret):
                return _error(f"missing or wrong {WEBHOOK_SECRET_HEADER} header", 403)
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise PayloadError("the webhook body has no 'action'", 422)
        if action not in TRAIN_EVENTS:
            return jsonify(status="Unknown event")
        # Training from annotations is a later issue: acknowledge without queueing, so
        # Label Studio (1 s webhook timeout) never waits on us.
        response = jsonify(result=None, status="ok")
        response.status_code = 201  # what the official SDK answers (capture 62)
        return response

    @app.after_request
    def timing(response: Response) -> Response:
        if "started" in g:
            elapsed = (time.perf_counter() - g.started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        return response

    return app


def _json_body() -> dict:
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise PayloadError("the request body is not valid JSON", 400)
    if not isinstance(body, dict):
        raise PayloadError("the request body must be a JSON object", 400)
    return body


def _error(message: str, status: int) -> Response:
    response = jsonify(error=message, status=status)
    response.status_code = status
    return response


def _dumps(item: dict) -> str:
    import json

    return json.dumps(item, separators=(",", ":"))


def _results_response(bodies: list[str]) -> Response:
    """`{"results": [...]}` spliced from the workers' JSON text (no re-encoding)."""
    return Response('{"results":[' + ",".join(bodies) + "]}", mimetype="application/json")
