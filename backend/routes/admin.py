"""Whole-project pre-annotation for operators (Basic auth like /predict).

`POST /preannotate {"project": ID, "limit": N}` queues the planning job (202 + its id);
`GET /preannotate/<project>` answers done/total/failed/rate of the project's run
(progress.py) and its per-task errors.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from squeezesam.backend.labelstudio import PayloadError
from squeezesam.backend.preannotate import run_status, start_project
from squeezesam.backend.routes import json_body, services

bp = Blueprint("admin", __name__)


@bp.post("/preannotate")
def preannotate_start() -> Response:
    """Pre-annotate a whole project in the background: 202 with the planning job's id."""
    body = json_body()
    project, limit = body.get("project"), body.get("limit")
    if isinstance(project, str) and project.isdigit():
        project = int(project)
    if isinstance(project, bool) or not isinstance(project, int) or project <= 0:
        raise PayloadError("'project' must be a Label Studio project id (integer)", 422)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise PayloadError("'limit' must be an integer", 422)
    job = start_project(services().dispatcher(), services().settings, project, limit=limit)
    response = jsonify(job=job.id, project=project, progress=f"/preannotate/{project}")
    response.status_code = 202
    return response


@bp.get("/preannotate/<int:project>")
def preannotate_progress(project: int) -> Response:
    """done/total/failed/rate of the project's run (progress.py) and its task errors."""
    return jsonify(run_status(services().dispatcher().redis, project))
