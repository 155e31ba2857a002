"""`POST /webhook`: Label Studio's events (annotations, Start Training, new tasks).

Outside Basic auth (Label Studio's auto-created webhook carries no credentials), so it
has its own secret: with WEBHOOK_SECRET set, the `X-Webhook-Secret` header must match,
or the request carries the Basic auth pair (Label Studio sends Start Training through
its ML connector with the model's Basic auth and no webhook header); the app's guard
checks that before the route runs (app.py, `_webhook_auth`).
What an event does is `SqueezeSAMBackend.fit` (model.py); the answer follows the SDK's.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.routes import backend, json_body

WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"
# events that change the label store (or train): answered 201 like the SDK (capture 62)
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING"}

bp = Blueprint("webhook", __name__)


@bp.post("/webhook")
def webhook() -> Response:
    body = json_body()
    action = body.get("action")
    if not isinstance(action, str):
        raise PayloadError("the webhook body has no 'action'", 422)
    answer = backend().fit(body)
    if answer.get("status") == "ignored":
        return jsonify(status="Unknown event")  # the SDK's answer
    response = jsonify(answer | {"result": answer.get("result")})
    response.status_code = 201 if action in TRAIN_EVENTS else 200  # SDK: 201 (capture 62)
    return response
