"""Label Studio's ML-backend protocol: /health, /setup, /versions and /predict.

Bulk `/predict` (no context): see bulk.py. Cached pre-annotations answer at once; the
rest run as one job per task on `preannotate` until PREANNOTATE_TIMEOUT. A task that is
not ready by then, or is bad (no image, unreachable or corrupt image), gets an item
without "result", which Label Studio skips (it stores nothing for that task, so nothing
blocks a retry); late tasks are written back to Label Studio by the whole-project job
(preannotate.py), bad ones are logged and listed by `GET /preannotate/<project>`.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from squeezesam.backend.routes import backend, json_body, services

MODEL_CLASS = "SqueezeSAM"

bp = Blueprint("predict", __name__)


@bp.get("/")  # what label-studio-ml's servers answer at `/`: the same as /health
@bp.get("/health")
def health() -> Response:
    return jsonify(status="UP", model_class=MODEL_CLASS)


@bp.get("/versions")
def versions() -> Response:
    current = services().model_version()
    names = services().model_versions()  # registered versions and the active one
    return jsonify(versions=names + [current] * (current not in names), model_version=current)


@bp.post("/setup")
def setup() -> Response:
    body = json_body()
    version = backend().setup(body.get("schema"), body.get("extra_params"), body.get("project"))
    return jsonify(model_version=version)


@bp.post("/predict")
def predict() -> Response:
    body = json_body()
    params = body.get("params") or {}
    context = params.get("context") if isinstance(params, dict) else None
    items = backend().predict(
        body.get("tasks"), body.get("label_config"), context, body.get("project")
    )
    # `{"results": [...]}` spliced from the workers' JSON text (no re-encoding)
    return Response('{"results":[' + ",".join(items) + "]}", mimetype="application/json")
