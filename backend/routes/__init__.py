"""The web app's routes, one Flask blueprint a concern, over the app's `Services`.

- predict.py: Label Studio's ML-backend protocol (/health, /setup, /versions, /predict);
- webhook.py: /webhook (annotations in, training and pre-annotation requests);
- admin.py: /preannotate, /preannotate/<project> (whole-project runs, for operators);
- the dashboard (backend/dashboard/) and /metrics (backend/metrics.py) register theirs.

Routes parse HTTP and answer JSON; what a request does is model.py. Helpers every
blueprint uses are here: the services and the backend of the current app, the JSON
body, the error answer.
"""

from __future__ import annotations

from flask import Response, current_app, jsonify, request

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.model import SqueezeSAMBackend
from squeezesam.backend.services import Services

SERVICES = "squeezesam.services"
BACKEND = "squeezesam.backend"


def services() -> Services:
    return current_app.extensions[SERVICES]


def backend() -> SqueezeSAMBackend:
    return current_app.extensions[BACKEND]


def json_body() -> dict:
    try:
        body = request.get_json(silent=True, force=True)
    except RecursionError:  # JSON nested thousands deep: bad input, not a crash
        raise PayloadError("the request body is nested too deeply", 400) from None
    if body is None:
        raise PayloadError("the request body is not valid JSON", 400)
    if not isinstance(body, dict):
        raise PayloadError("the request body must be a JSON object", 400)
    return body


def error(message: str, status: int) -> Response:
    """The one error shape: `{"error": "...", "status": N}` with that HTTP status."""
    response = jsonify(error=message, status=status)
    response.status_code = status
    return response
