"""`/dashboard`: labelling throughput for project leads (a Flask Blueprint).

    /dashboard/?project=2&from=2026-11-01&to=2026-11-30   the page (HTML, charts + tables)
    /dashboard/data.json?...                               every figure as JSON
    /dashboard/<table>.csv?...                             one table as CSV

The blueprint adds no auth of its own: `init_dashboard` registers it on the app from the
app factory, whose `before_request` guard (HTTP Basic auth) covers every endpoint that is
not explicitly open, this one included. Figures come from the label store's read path
(figures.py over store/label_rows.py); running pre-annotation jobs from Redis
(progress.py). Charts are SVG drawn by static/dashboard.js, shipped here: no CDN, the
machines have no network.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from typing import Any

import redis
from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from sqlalchemy.engine import Engine

from squeezesam.backend.annotators import AnnotatorNames
from squeezesam.backend.csv_cells import safe_cell
from squeezesam.backend.dashboard import figures
from squeezesam.backend.progress import read_progress
from squeezesam.backend.store.reads import reading
from squeezesam.backend.training_progress import describe, running_progress

log = logging.getLogger(__name__)

EXTENSION = "squeezesam.dashboard"

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)


class Sources:
    """Where the dashboard reads from; opened on first use, so the app starts (and
    `/health` answers) even when the store or Redis is not reachable yet."""

    def __init__(self, settings: Any, engine: Engine | None, redis_client: redis.Redis | None):
        self.settings = settings
        self._engine = engine
        self._redis = redis_client
        self._lock = threading.Lock()
        self.annotator_names = AnnotatorNames(settings)  # cached per app (annotators.py)

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from squeezesam.backend.store import Store

                self._engine = Store.open(self.settings).engine
            return self._engine

    def redis(self) -> redis.Redis | None:
        with self._lock:
            if self._redis is None and getattr(self.settings, "redis_url", ""):
                from squeezesam.backend.redis_conn import connect

                self._redis = connect(self.settings)
            return self._redis


def init_dashboard(
    app: Flask, engine: Engine | None = None, redis_client: redis.Redis | None = None
) -> None:
    """Register `/dashboard` on `app`. `engine`: the label store's (`store.engine`);
    default: `Store.open(settings)` on first use. `redis_client`: default from REDIS_URL."""
    app.extensions[EXTENSION] = Sources(app.config.get("SETTINGS"), engine, redis_client)
    app.register_blueprint(bp)


# script and styles from our own static files only; `style-src-attr` for the progress
# bars' width attribute; no frames (clickjacking), no forms to elsewhere, no plugins
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.after_request
def security_headers(response: Response) -> Response:
    """CSP and no framing on every dashboard answer (nosniff: app.py, on every answer)."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _sources() -> Sources:
    return current_app.extensions[EXTENSION]


def _period() -> figures.Period:
    try:
        max_days = getattr(_sources().settings, "dashboard_max_days", figures.MAX_DAYS)
        return figures.Period.parse(
            request.args.get("project"),
            request.args.get("from"),
            request.args.get("to"),
            max_days=max_days,
        )
    except ValueError as exc:
        abort(400, description=str(exc))


def _progress(project_id: int | None) -> tuple[list[dict[str, Any]], str]:
    """Pre-annotation runs from Redis, and an error text if Redis could not be read."""
    try:
        conn = _sources().redis()
        if conn is None:
            return [], "REDIS_URL is not set"
        return [p.as_row() for p in read_progress(conn, project_id)], ""
    except (redis.RedisError, RuntimeError, OSError) as exc:
        log.warning("dashboard: reading pre-annotation progress failed: %s", exc)
        return [], f"Redis is not reachable ({type(exc).__name__})"


def _data() -> dict[str, Any]:
    period = _period()
    sources = _sources()
    if period.project_id is None:  # default: the most recently labelled project
        with reading(sources.engine) as conn:
            known = figures.projects(conn)
        if known:
            period = figures.Period(known[0]["project"], period.start, period.end)
    else:
        with reading(sources.engine) as conn:
            known = figures.projects(conn)
    data = figures.compute(sources.engine, period)
    data["projects"] = known
    data["preannotation"], data["preannotation_error"] = _progress(period.project_id)
    _add_run_progress(data["training_runs"])
    _add_annotator_names(data)
    return data


def _add_run_progress(runs: list[dict[str, Any]]) -> None:
    """`progress` of each run: step, loss and ETA for a running one (its rq job's meta,
    training_progress.py), else empty."""
    running: dict[int, dict[str, Any]] = {}
    if any(r["status"] == "running" for r in runs):
        try:
            conn = _sources().redis()
            running = running_progress(conn) if conn is not None else {}
        except (redis.RedisError, RuntimeError, OSError) as exc:
            log.warning("dashboard: reading fine-tuning progress failed: %s", exc)
    for run in runs:
        progress = running.get(run["id"]) if run["status"] == "running" else None
        run["progress"] = describe(progress) if progress else ""


def _add_annotator_names(data: dict[str, Any]) -> None:
    """Each annotator row's `name`: email or username from Label Studio's users API
    (cached: annotators.py), else `user <id>` (Label Studio unreachable, user deleted)."""
    names = _sources().annotator_names
    known = names.names() if data["annotators"] else {}
    for row in data["annotators"]:
        who = row["annotator"]
        row["name"] = known.get(who) or f"user {who}" if isinstance(who, int) else str(who)
    data["annotator_names_error"] = names.error if data["annotators"] else ""


@bp.get("/")
def page() -> str:
    data = _data()
    return render_template("dashboard.html", data=data, args=request.args)


@bp.get("/data.json")
def data_json() -> Any:
    return _data()


@bp.get("/<name>.csv")
def table_csv(name: str) -> Response:
    if name not in figures.TABLES and name != "preannotation":
        abort(404, description=f"no table {name!r}; tables: {', '.join(figures.TABLES)}")
    data = _data()
    rows: list[dict[str, Any]] = data[name]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:  # nested values (training metrics) as JSON text in one cell
            # (formula-like text gets a leading ': csv_cells.py)
            writer.writerow({k: safe_cell(json.dumps(v) if isinstance(v, dict | list) else v)
                             for k, v in row.items()})  # fmt: skip
    project = data["project"] if data["project"] is not None else "all"
    filename = f"squeezesam_{name}_project{project}_{data['from'][:10]}_{data['to'][:10]}.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
