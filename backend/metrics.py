"""`/metrics`: Prometheus text format, every metric named `squeezesam_...`.

Two kinds of figures, because web and workers are separate processes:

- Latency, observed where it is felt: the web process waits on every job, so it times
  each click and each pre-annotated task end to end (queue wait + model + encoding) and
  calls `observe_click` / `observe_preannotation`. These histograms live in this
  process's memory (one web process, as `squeezesam web` runs it; under a multi-process
  WSGI server each process would report its own, which Prometheus sums fine per label).
- Everything cross-process is read at scrape time by `StateCollector`: rq queue lengths
  and job registries and worker heartbeats from Redis, the active model version, label
  counts and fine-tuning runs from the label store, pre-annotation progress from Redis
  (progress.py). Nothing is cached, so a scrape shows the state at that moment; a source
  that cannot be read is reported by `squeezesam_source_up{source} 0`, and the scrape
  still answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from rq import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from squeezesam.backend.progress import read_progress
from squeezesam.backend.queues import QUEUES, alive_workers
from squeezesam.backend.registry import model_version
from squeezesam.backend.store.reads import (
    label_counts,
    last_run_starts,
    reading,
    training_run_counts,
)

log = logging.getLogger(__name__)

EXTENSION = "squeezesam.metrics"

# --- latency, observed in the web process ------------------------------------------------

LATENCY_REGISTRY = CollectorRegistry(auto_describe=True)
# Clicks: the editor waits on each; 40 ms model passes, so fine buckets below a second.
CLICK_LATENCY = Histogram(
    "squeezesam_click_latency_seconds",
    "One interactive click through the service (enqueue to answer), by outcome",
    ["outcome"],
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 20, 30),
    registry=LATENCY_REGISTRY,
)
# Pre-annotation: one task of a bulk /predict; Label Studio gives the whole call 100 s.
PREANNOTATION_LATENCY = Histogram(
    "squeezesam_preannotation_latency_seconds",
    "One task of a bulk /predict (enqueue to answer), by outcome",
    ["outcome"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120),
    registry=LATENCY_REGISTRY,
)
OUTCOMES = ("ok", "bad_request", "unavailable", "timeout", "error")
for _outcome in OUTCOMES:  # every series exists (at 0) before its first event
    CLICK_LATENCY.labels(_outcome)
    PREANNOTATION_LATENCY.labels(_outcome)
# (status, decision) of a fine-tuning run, each reported per project even at 0
RUN_OUTCOMES = (("running", ""), ("finished", "promoted"), ("finished", "rejected"),
                ("finished", "none"), ("failed", "none"))  # fmt: skip


def outcome_of(status: int | str) -> str:
    """An HTTP status (the job Outcome's) as a small fixed label set."""
    if isinstance(status, str):
        return status if status in OUTCOMES else "error"
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"  # no worker, Redis down
    if status == 504:
        return "timeout"
    return "bad_request" if status < 500 else "error"


def observe_click(seconds: float, outcome: int | str = "ok") -> None:
    """Record one interactive click; `outcome`: the HTTP status answered, or a label."""
    CLICK_LATENCY.labels(outcome_of(outcome)).observe(seconds)


def observe_preannotation(seconds: float, outcome: int | str = "ok") -> None:
    """Record one task of a bulk /predict (call once per task, with its own status)."""
    PREANNOTATION_LATENCY.labels(outcome_of(outcome)).observe(seconds)


# --- cross-process state, read at scrape time --------------------------------------------

_JOB_STATES = {
    "started": StartedJobRegistry,
    "finished": FinishedJobRegistry,  # kept for result_ttl (60 s): recent outcomes
    "failed": FailedJobRegistry,  # kept for failure_ttl (600 s)
    "deferred": DeferredJobRegistry,
    "scheduled": ScheduledJobRegistry,
    "canceled": CanceledJobRegistry,
}


class StateCollector:
    """A custom Collector: queries Redis and the store on every scrape."""

    def __init__(self, sources: Any) -> None:
        self.sources = sources  # dashboard.Sources: lazy engine + Redis client

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "squeezesam_source_up",
            "Whether a source could be read in this scrape",
            labels=["source"],
        )
        for source, read in (("redis", self._redis), ("store", self._store)):
            ok = True
            try:
                yield from read()
            except Exception as exc:  # a metrics scrape must never fail the whole answer
                log.warning("metrics: reading %s failed: %s", source, exc)
                ok = False
            up.add_metric([source], 1.0 if ok else 0.0)
        yield from self._model()
        yield up

    def _redis(self) -> Iterator[Metric]:
        conn = self.sources.redis()
        if conn is None:
            raise RuntimeError("REDIS_URL is not set")
        depth = GaugeMetricFamily(
            "squeezesam_queue_depth", "Jobs waiting in a queue", labels=["queue"]
        )
        jobs = GaugeMetricFamily(
            "squeezesam_queue_jobs",
            "Jobs in rq's registries per queue and state (finished/failed: recent, as long "
            "as rq keeps them)",
            labels=["queue", "state"],
        )
        workers = GaugeMetricFamily(
            "squeezesam_workers", "Workers with a live heartbeat, per queue", labels=["queue"]
        )
        for name in QUEUES:
            depth.add_metric([name], Queue(name, connection=conn).count)
            for state, registry in _JOB_STATES.items():
                jobs.add_metric([name, state], registry(name, connection=conn).count)
            workers.add_metric([name], len(alive_workers(conn, name)))
        tasks = GaugeMetricFamily(
            "squeezesam_preannotation_tasks",
            "Tasks of the current pre-annotation run per project (progress.py contract)",
            labels=["project", "state"],
        )
        for p in read_progress(conn):
            for state, value in (("total", p.total), ("done", p.done), ("failed", p.failed)):
                tasks.add_metric([p.project_id, state], value)
        yield from (depth, jobs, workers, tasks)

    def _store(self) -> Iterator[Metric]:
        engine = self.sources.engine
        labels = GaugeMetricFamily(
            "squeezesam_labels", "Annotations in the label store", labels=["project", "state"]
        )
        objs = GaugeMetricFamily(
            "squeezesam_objects", "Object masks of kept annotations", labels=["project"]
        )
        n_clicks = GaugeMetricFamily("squeezesam_clicks", "Recorded clicks", labels=["project"])
        runs = GaugeMetricFamily(
            "squeezesam_training_runs",
            "Fine-tuning runs by status and decision",
            labels=["project", "status", "decision"],
        )
        last = GaugeMetricFamily(
            "squeezesam_training_last_started_timestamp_seconds",
            "When the latest fine-tuning run started (unix time)",
            labels=["project"],
        )
        with reading(engine) as conn:
            counts = label_counts(conn)
            run_counts = training_run_counts(conn)
            starts = last_run_starts(conn)
        for p, c in counts.items():  # every known project and state, zeros included
            for state, n in c["annotations"].items():
                labels.add_metric([p, state], n)
            objs.add_metric([p], sum(c["objects"].values()))
            n_clicks.add_metric([p], c["clicks"])
        by_run = {(_project(p), status, decision): n for p, status, decision, n in run_counts}
        for project in sorted(set(counts) | {key[0] for key in by_run}):
            for status, decision in RUN_OUTCOMES:
                by_run.setdefault((project, status, decision), 0)
        for (project, status, decision), n in sorted(by_run.items()):
            runs.add_metric([project, status, decision], n)
        for p, started in starts:
            last.add_metric([_project(p)], _unix(started))
        yield from (labels, objs, n_clicks, runs, last)

    def _model(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "squeezesam_model_info",
            "The model version the workers serve (value 1), and where it comes from",
            labels=["version", "source"],
        )
        version, source = active_model_version(self.sources.settings)
        if version:
            info.add_metric([version, source], 1.0)
        yield info


def active_model_version(settings: Any) -> tuple[str | None, str]:
    """(version, source): the registry's ACTIVE version, else the configured model file's
    metadata version (what workers load when no version is active)."""
    try:
        from squeezesam.backend.registry import Registry, registry_root_from

        active = Registry(registry_root_from(settings)).active()
        if active:
            return active, "registry"
        if settings is not None:
            return model_version(settings), "model_file"
    except Exception as exc:  # missing model file, unreadable registry: no info, no error
        log.debug("metrics: model version unknown: %s", exc)
    return None, ""


def _project(p: int | None) -> str:
    return "all" if p is None else str(p)


def _unix(t: Any) -> float:
    import datetime as dt

    return t.replace(tzinfo=dt.UTC).timestamp()


# --- the endpoint ------------------------------------------------------------------------

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    body = generate_latest(LATENCY_REGISTRY) + generate_latest(current_app.extensions[EXTENSION])
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})  # fmt: skip


def register_metrics(
    app: Flask, engine: sa.Engine | None = None, redis_client: redis.Redis | None = None
) -> None:
    """Add `/metrics` to `app` (behind the app's own auth guard, like every route that is
    not in OPEN_ENDPOINTS). Sources default as in `init_dashboard`, and are shared with
    the dashboard when it is registered first."""
    from squeezesam.backend.dashboard import EXTENSION as DASHBOARD
    from squeezesam.backend.dashboard import Sources

    sources = app.extensions.get(DASHBOARD) or Sources(
        app.config.get("SETTINGS"), engine, redis_client
    )
    registry = CollectorRegistry(auto_describe=False)  # per app: tests build many apps
    registry.register(StateCollector(sources))
    app.extensions[EXTENSION] = registry
    app.register_blueprint(bp)
