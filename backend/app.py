"""The Flask app: Label Studio's ML-backend protocol, routes only.

request -> parse (labelstudio.py) -> queue (dispatch.py) -> worker (worker.py, jobs.py) ->
model (models/predictor.py) -> encode (brush RLE, labelstudio.py) -> response.
Every error is JSON `{"error": "...", "status": N}` naming the problem; the app keeps
serving after any of them.

Bulk `/predict` (no context): see bulk.py. Cached pre-annotations answer at once; the
rest run as one job per task on `preannotate` until PREANNOTATE_TIMEOUT. A task that is
not ready by then, or is bad (no image, unreachable or corrupt image), gets an item
without "result", which Label Studio skips (it stores nothing for that task, so nothing
blocks a retry); late tasks are written back to Label Studio by the whole-project job
(preannotate.py), bad ones are logged and listed by `GET /preannotate/<project>`.
`POST /preannotate {"project": ID}` starts a whole-project run (202 + job id).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from squeezesam.backend import jobs, webhooks
from squeezesam.backend.auth import basic_auth_ok, webhook_secret_ok
from squeezesam.backend.dashboard import init_dashboard
from squeezesam.backend.dispatch import Dispatcher
from squeezesam.backend.labelstudio import (
    PayloadError,
    parse_context,
    parse_label_config,
    task_image,
    task_regions,
)
from squeezesam.backend.metrics import observe_click, register_metrics
from squeezesam.backend.queues import INTERACTIVE
from squeezesam.backend.recorder import Recorder
from squeezesam.backend.redis_conn import connect
from squeezesam.backend.registry import model_registry, model_version
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store, StoreError

log = logging.getLogger(__name__)

MODEL_CLASS = "SqueezeSAM"
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
OPEN_ENDPOINTS = {"health", "webhook"}  # webhook has its own secret (LS sends no basic auth)
# events that change the label store (or train): answered 201 like the SDK (capture 62)
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"}


class ServiceError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask("squeezesam")
    app.config["SETTINGS"] = settings
    state: dict[str, Any] = {}

    def dispatcher() -> Dispatcher:
        if "d" not in state:  # connect on first use: /health works without Redis
            try:
                state["d"] = Dispatcher(connect(settings), settings)
            except RuntimeError as exc:
                raise ServiceError(str(exc), 503) from None
        return state["d"]

    store_lock = threading.Lock()

    def store() -> Store:
        # opened in the background at start (below); a request that comes first waits
        # for that open instead of starting a second one. /health never needs it.
        if "store" not in state:
            with store_lock:
                if "store" not in state:
                    try:
                        opened = Store.open(settings)
                        opened.warm_up()
                    except StoreError as exc:
                        log.error("label store unavailable: %s", exc)
                        raise ServiceError(f"label store unavailable: {exc}", 503) from None
                    state["store"] = opened
        return state["store"]

    def store_or_none() -> Store | None:
        """The store for background writes, which never fail an answer: None when it
        cannot be opened (store() has logged why)."""
        try:
            return store()
        except ServiceError:
            return None

    def open_store_early() -> None:
        """Label Studio gives a webhook 1 s: the first one must not pay for opening the
        store (engine, create_all, column checks, first queries). A failure here is
        logged; the first request that needs the store tries again."""
        try:
            store()
        except ServiceError:
            pass

    threading.Thread(target=open_store_early, name="store-open", daemon=True).start()
    # clicks and served regions are written after the answer, off the request path
    recorder = app.extensions["squeezesam.recorder"] = Recorder()

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
            auth = request.authorization  # any bytes: a 401, never a 500 (auth.py)
            ok = basic_auth_ok(auth, settings.basic_auth_user, settings.basic_auth_pass)
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
        # every registered version (fine-tuned ones, promoted or not) and the active one
        names = [m.version for m in model_registry(settings).list()]
        return jsonify(versions=names + [current] * (current not in names), model_version=current)

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
        return _bulk(body, tasks, config)

    def _interactive(tasks: list, context: Any, config) -> Response:
        if len(tasks) != 1:
            raise PayloadError(f"an interactive request carries 1 task, got {len(tasks)}", 422)
        spec = jobs.ClickJob(
            task_image(tasks[0], config).ref,
            parse_context(context, config),
            config,
            task_regions(tasks[0], config),  # a click on a pre-annotated object refines it
        )
        started = time.perf_counter()
        outcome = dispatcher().run(
            INTERACTIVE, jobs.segment_click, spec, settings.interactive_timeout
        )
        observe_click(time.perf_counter() - started, outcome.status)
        if not outcome.ok:
            raise ServiceError(outcome.error, outcome.status)
        _record_click(tasks[0], context, outcome.body)
        return _results_response([outcome.body])

    def _record_click(task: Any, context: Any, answer: str) -> None:
        """Keep the annotator's clicks (for later click-level training) and the region
        served for them, written in the background: the answer is parsed there, once,
        not on the click's path. A store failure is logged and never fails the click."""
        try:
            points = webhooks.clicks_from_context(context)
            project = (
                webhooks.project_id_of(request.get_json(silent=True)["project"]) if points else None
            )
        except Exception as exc:
            log.warning("clicks not recorded: %s: %s", type(exc).__name__, exc)
            points, project = [], None
        task_id = task.get("id")

        def write() -> None:
            item = json.loads(answer)
            opened = store_or_none()
            if opened is None:
                return
            if points:
                try:
                    opened.record_clicks(project, int(task_id), points,
                                         model_version=item.get("model_version"))  # fmt: skip
                except Exception as exc:
                    log.warning("clicks not recorded: %s: %s", type(exc).__name__, exc)
            opened.record_served_item(task_id, item, "click")

        recorder.submit(write)

    def _bulk(body: dict, tasks: list, config) -> Response:
        from squeezesam.backend import bulk

        project = bulk.project_id_of(body, tasks)
        items = bulk.answer(dispatcher(), tasks, config, body["label_config"], version(), project)
        _record_served(tasks, items, "preannotation")
        return _results_response(items)

    def _record_served(tasks: list, items: list[str], kind: str) -> None:
        """Remember the regions served per task (the start of an annotation: the label
        store compares it with the final masks), in the background; never fails the
        answer."""
        served = [
            (task.get("id"), item)
            for task, item in zip(tasks, items, strict=False)
            if isinstance(task, dict) and '"result"' in item  # skipped items carry none
        ]
        if not served:
            return

        def write() -> None:
            opened = store_or_none()
            if opened is None:
                return
            for task_id, item in served:
                opened.record_served_item(task_id, item, kind)

        recorder.submit(write)

    @app.post("/preannotate")
    def preannotate_start() -> Response:
        """Pre-annotate a whole project in the background: 202 with the planning job's id."""
        from squeezesam.backend.preannotate import start_project

        body = _json_body()
        project, limit = body.get("project"), body.get("limit")
        if isinstance(project, str) and project.isdigit():
            project = int(project)
        if isinstance(project, bool) or not isinstance(project, int) or project <= 0:
            raise PayloadError("'project' must be a Label Studio project id (integer)", 422)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise PayloadError("'limit' must be an integer", 422)
        job = start_project(dispatcher(), settings, project, limit=limit)
        response = jsonify(job=job.id, project=project, progress=f"/preannotate/{project}")
        response.status_code = 202
        return response

    @app.get("/preannotate/<int:project>")
    def preannotate_progress(project: int) -> Response:
        """done/total/failed/rate of the project's run (progress.py) and its task errors."""
        from squeezesam.backend.preannotate import run_status

        return jsonify(run_status(dispatcher().redis, project))

    @app.post("/webhook")
    def webhook() -> Response:
        if settings.webhook_secret:
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if not webhook_secret_ok(given, settings.webhook_secret):
                return _error(f"missing or wrong {WEBHOOK_SECRET_HEADER} header", 403)
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str):
            raise PayloadError("the webhook body has no 'action'", 422)
        # Label Studio gives a webhook 1 s and never resends it: store synchronously (a few
        # ms), queue anything long (training, pre-annotation) and answer.
        try:
            answer = webhooks.handle_event(store(), body)
        except StoreError as exc:  # the periodic reconcile catches up later
            log.error("webhook %s not stored: %s", action, exc)
            raise ServiceError(f"label store unavailable: {exc}", 503) from None
        if answer.get("status") == "ignored":
            return jsonify(status="Unknown event")  # the SDK's answer
        if answer.get("train_requested"):
            from squeezesam.backend.train_queue import enqueue_training

            job = enqueue_training(dispatcher().redis, answer["project"], trigger="start_training")
            answer["job"] = job.id  # with a `job`, Label Studio records a train job
        if answer.get("tasks") and answer.get("project") is not None:
            from squeezesam.backend.preannotate import enqueue_tasks

            project = body.get("project")
            config = project.get("label_config") if isinstance(project, dict) else None
            answer["queued"] = enqueue_tasks(dispatcher(), settings, answer["project"],
                                             answer["tasks"], label_config=config)  # fmt: skip
        response = jsonify(answer | {"result": answer.get("result")})
        response.status_code = 201 if action in TRAIN_EVENTS else 200  # SDK: 201 (capture 62)
        return response

    @app.after_request
    def timing(response: Response) -> Response:
        if "started" in g:
            elapsed = (time.perf_counter() - g.started) * 1000
            response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        return response

    init_dashboard(app)  # /dashboard (+ CSV, JSON), behind the same Basic auth guard
    register_metrics(app)  # /metrics, Prometheus text format
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


def _results_response(bodies: list[str]) -> Response:
    """`{"results": [...]}` spliced from the workers' JSON text (no re-encoding)."""
    return Response('{"results":[' + ",".join(bodies) + "]}", mimetype="application/json")
