"""Label Studio's ML-backend protocol: /health, /setup, /versions and /predict.

Bulk `/predict` (no context): see bulk.py. Cached pre-annotations answer at once; the
rest run as one job per task on `preannotate` until PREANNOTATE_TIMEOUT. A task that is
not ready by then, or is bad (no image, unreachable or corrupt image), gets an item
without "result", which Label Studio skips (it stores nothing for that task, so nothing
blocks a retry); late tasks are written back to Label Studio by the whole-project job
(preannotate.py), bad ones are logged and listed by `GET /preannotate/<project>`.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.routes import backend, error, json_body, services

log = logging.getLogger(__name__)

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
    try:
        version = backend().setup(body.get("schema"), body.get("extra_params"),
                                  body.get("project"))  # fmt: skip
    except PayloadError as exc:
        # Label Studio shows only `str(HTTPError)` on the model card ("422 Client Error:
        # <reason> for url"): the reason phrase carries the message, so the lead reads it
        log.warning("/setup refused: %s", exc)
        response = error(str(exc), exc.status)
        response.status = f"{exc.status} {_reason(str(exc))}"
        return response
    return jsonify(model_version=version)


def _reason(message: str) -> str:
    """A message fit for an HTTP reason phrase: printable ASCII, one line, bounded."""
    text = message.encode("ascii", "replace").decode()
    return "".join(c if c.isprintable() else " " for c in text)[:300]


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
