"""`/metrics`: latency histograms from the web process, state read from Redis and the
store at scrape time, the same auth as every other route."""

from __future__ import annotations

import base64
import datetime as dt
import re

import pytest
import redis
from flask import Flask
from rq import Queue

from squeezesam.backend import metrics
from squeezesam.backend.app import create_app
from squeezesam.backend.progress import progress_advance, progress_start
from squeezesam.backend.queues import alive_key
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store
from squeezesam.backend.store.runs import record_training_run
from squeezesam.backend.store.schema import AnnotationRecord, ClickRecord


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in Prometheus text, or None."""
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


@pytest.fixture()
def conn(redis_server):
    # a database of its own: the session's rq workers (db 0) must not take these jobs
    client = redis.Redis.from_url(redis_server.url, db=7)
    client.flushdb()
    yield client
    client.flushdb()


def app_with(store: Store, conn: redis.Redis | None) -> Flask:
    app = Flask("t")
    app.config["SETTINGS"] = None
    metrics.register_metrics(app, engine=store.engine, redis_client=conn)
    return app


def test_outcome_labels():
    assert [metrics.outcome_of(s) for s in (200, 422, 503, 504, 500, "timeout", "odd")] == [
        "ok", "bad_request", "unavailable", "timeout", "error", "timeout", "error"]  # fmt: skip


def test_latency_histograms_count_each_observation(tmp_path):
    client = app_with(Store(tmp_path), None).test_client()

    def count(name, outcome):
        return value(client.get("/metrics").get_data(as_text=True), name, outcome=outcome) or 0

    click = "squeezesam_click_latency_seconds_count"
    before = count(click, "ok"), count(click, "timeout")
    metrics.observe_click(0.04, 200)
    metrics.observe_click(0.06, "ok")
    metrics.observe_click(20.0, 504)
    assert (count(click, "ok"), count(click, "timeout")) == (before[0] + 2, before[1] + 1)
    pre = "squeezesam_preannotation_latency_seconds_count"
    start = count(pre, "error")
    metrics.observe_preannotation(3.0, 500)
    assert count(pre, "error") == start + 1
    text = client.get("/metrics").get_data(as_text=True)
    assert 'squeezesam_click_latency_seconds_bucket{le="0.05",outcome="ok"}' in text


def test_state_from_redis_and_the_store(tmp_path, conn):
    store = Store(tmp_path)
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    for aid, cancelled in ((1, False), (2, False), (3, True)):
        store.save_annotation(AnnotationRecord(aid, 5, 100 + aid, None, when,
                                               was_cancelled=cancelled))  # fmt: skip
    store.mark_deleted([2], 5)
    store.served.record_clicks(
        5, 101, [ClickRecord(1, 1, True, region_id="a"), ClickRecord(2, 2, False, region_id="b")]
    )
    record_training_run(store.engine, project=5, started_at=when, status="finished",
                        decision="promoted")  # fmt: skip
    record_training_run(store.engine, project=5, started_at=when, status="finished",
                        decision="rejected")  # fmt: skip
    q = Queue("preannotate", connection=conn)
    for _ in range(3):
        q.enqueue("builtins.print", "x")
    conn.zadd(alive_key("interactive"), {"w1": __import__("time").time()})
    progress_start(conn, 5, total=10, model_version="v3")
    progress_advance(conn, 5, done=4, failed=1)

    text = app_with(store, conn).test_client().get("/metrics").get_data(as_text=True)
    assert value(text, "squeezesam_queue_depth", queue="preannotate") == 3
    assert value(text, "squeezesam_queue_depth", queue="interactive") == 0
    assert value(text, "squeezesam_queue_jobs", queue="preannotate", state="failed") == 0
    assert value(text, "squeezesam_workers", queue="interactive") == 1
    assert value(text, "squeezesam_workers", queue="preannotate") == 0
    assert value(text, "squeezesam_preannotation_tasks", project="5", state="done") == 4
    assert value(text, "squeezesam_preannotation_tasks", project="5", state="failed") == 1
    assert value(text, "squeezesam_labels", project="5", state="kept") == 1
    assert value(text, "squeezesam_labels", project="5", state="deleted") == 1
    assert value(text, "squeezesam_labels", project="5", state="cancelled") == 1
    assert value(text, "squeezesam_clicks", project="5") == 2
    assert value(text, "squeezesam_training_runs", project="5", decision="promoted") == 1
    assert value(text, "squeezesam_training_runs", project="5", decision="rejected") == 1
    assert value(text, "squeezesam_training_last_started_timestamp_seconds") == when.timestamp()
    assert value(text, "squeezesam_source_up", source="redis") == 1
    assert value(text, "squeezesam_source_up", source="store") == 1
    assert all(line.startswith(("# ", "squeezesam_")) for line in text.splitlines()), (
        "every metric is named squeezesam_..."
    )


def test_unreachable_redis_is_reported_not_fatal(tmp_path):
    dead = redis.Redis.from_url(f"unix://{tmp_path}/nothing.sock", socket_connect_timeout=1)
    response = app_with(Store(tmp_path), dead).test_client().get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert value(text, "squeezesam_source_up", source="redis") == 0
    assert value(text, "squeezesam_source_up", source="store") == 1


def test_metrics_and_dashboard_sit_behind_the_apps_basic_auth(tmp_path):
    # create_app itself registers /dashboard and /metrics (on the settings' data dir)
    app = create_app(
        Settings(basic_auth_user="lead", basic_auth_pass="s3cret", data_dir=str(tmp_path))
    )
    client = app.test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"lead:s3cret").decode()}
    for path in ("/metrics", "/dashboard/", "/dashboard/annotators.csv", "/dashboard/data.json",
                 "/dashboard/static/dashboard.js"):  # fmt: skip
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=good).status_code == 200, path


def test_labelled_series_exist_at_zero_before_their_first_event(tmp_path):
    """Prometheus series with labels are there from the first scrape: every outcome of the
    latency histograms, and per known project every label state and run outcome (a rate()
    or an alert on them works before the first timeout or the first rejected run)."""
    store = Store(tmp_path)
    when = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    store.save_annotation(AnnotationRecord(1, 9, 101, None, when))
    text = app_with(store, None).test_client().get("/metrics").get_data(as_text=True)
    for name in ("squeezesam_click_latency_seconds_count",
                 "squeezesam_preannotation_latency_seconds_count"):  # fmt: skip
        for outcome in metrics.OUTCOMES:
            assert value(text, name, outcome=outcome) is not None, (name, outcome)
    assert value(text, "squeezesam_labels", project="9", state="kept") == 1
    assert value(text, "squeezesam_labels", project="9", state="deleted") == 0
    assert value(text, "squeezesam_labels", project="9", state="cancelled") == 0
    assert value(text, "squeezesam_objects", project="9") == 0
    assert value(text, "squeezesam_clicks", project="9") == 0
    for status, decision in metrics.RUN_OUTCOMES:
        assert value(text, "squeezesam_training_runs", project="9", status=status,
                     decision=decision) == 0  # fmt: skip
