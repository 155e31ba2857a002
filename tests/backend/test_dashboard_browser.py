"""The dashboard in a real browser: headless Chromium loads /dashboard from a running
backend (the app factory's app, seeded store, served by werkzeug in a thread), the test
finds every chart and table in the rendered DOM, and saves a screenshot.

Fails on a JavaScript error (the page records them in <body data-js-errors>, and
Chromium prints console errors to stderr) and on an empty chart (each chart figure
carries data-marks = bars drawn). With SQUEEZESAM_UPDATE_SCREENSHOT=1 the screenshot
is also copied to docs/dashboard.png.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from werkzeug.serving import make_server

from squeezesam.backend.app import create_app
from squeezesam.backend.progress import progress_advance, progress_start
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store
from squeezesam.backend.store.runs import record_training_run
from squeezesam.backend.store.schema import annotations, clicks, objects

CHROMIUM = Path("/usr/bin/chromium")
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
START = dt.datetime(2026, 3, 2)  # a Monday; seven days of labelling follow
QUERY = "?project=3&from=2026-03-02&to=2026-03-08"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
)


def seed_week(store: Store) -> None:
    """A week of project 3: five annotators, three model versions, each fine-tuning run
    making annotators a little faster (the story the dashboard should make visible)."""
    rng = random.Random(3)
    versions = [("sqsam-2026.03.01", 1.0), ("sqsam-2026.03.04", 0.8), ("sqsam-2026.03.06", 0.65)]
    a_rows, o_rows, c_rows, aid = [], [], [], 0
    for day in range(7):
        version, effort = versions[0 if day < 2 else 1 if day < 4 else 2]
        for hour in range(8, 18):
            for _ in range(rng.randrange(2, 9) if day < 5 else rng.randrange(0, 3)):
                aid += 1
                when = START + dt.timedelta(days=day, hours=hour, minutes=rng.randrange(60))
                n_obj = rng.choice([1, 1, 2, 3])
                a_rows.append(dict(annotation_id=aid, project_id=3, task_id=aid,
                                   annotator=rng.choice([11, 12, 13, 14, 15]),
                                   lead_time=rng.uniform(20, 70) * effort * n_obj,
                                   created_at=when, updated_at=when, was_cancelled=False,
                                   deleted=False, stored_at=when, parent_prediction=aid,
                                   model_version=version))  # fmt: skip
                for k in range(n_obj):
                    origin = "prediction" if rng.random() < 1.1 - effort else "prediction-changed"
                    # the store matched each object to the region it served: the final mask's
                    # IoU with it (1.0: kept as served; lower: corrected)
                    start_iou = 1.0 if origin == "prediction" else rng.uniform(0.55, 0.9)
                    o_rows.append(dict(annotation_id=aid, number=k + 1, label="Person", width=8,
                                       height=8, area=10, mask_path="x.png", origin=origin,
                                       start_iou=start_iou, start_model_version=version,
                                       start_kind="preannotation",
                                       start_label="Person"))  # fmt: skip
                for k in range(round(n_obj * rng.uniform(1, 5) * effort)):
                    c_rows.append(dict(project_id=3, task_id=aid, region_id=f"k{k}", x=1.0,
                                       y=1.0, is_positive=True, model_version=version,
                                       created_at=when))  # fmt: skip
    with store.engine.begin() as conn:
        for table, rows in ((annotations, a_rows), (objects, o_rows), (clicks, c_rows)):
            conn.execute(table.insert(), rows)
    for day, (cand, cur), decision, reason in [
        (3, ("sqsam-2026.03.04", "sqsam-2026.03.01"), "promoted", "NoC@90 3.4 -> 2.9"),
        (4, ("sqsam-2026.03.05", "sqsam-2026.03.04"), "rejected", "NoC@90 2.9 -> 3.0: no gain"),
        (5, ("sqsam-2026.03.06", "sqsam-2026.03.04"), "promoted", "NoC@90 2.9 -> 2.5"),
    ]:
        started = START + dt.timedelta(days=day - 1, hours=19)
        record_training_run(store.engine, project=3, started_at=started,
                            finished_at=started + dt.timedelta(minutes=42), status="finished",
                            data_size=120 * day, duration_s=2520.0, candidate_version=cand,
                            current_version=cur, decision=decision, reason=reason,
                            metrics={"candidate": {"NoC@90": float(reason.split()[3].rstrip(":"))},
                                     "current": {"NoC@90": float(reason.split()[1])}})  # fmt: skip


@pytest.fixture()
def dashboard_url(tmp_path, redis_server):
    store = Store(tmp_path / "data")
    seed_week(store)
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushdb()
    progress_start(conn, 3, total=480, model_version="sqsam-2026.03.06")
    progress_advance(conn, 3, done=312, failed=4)
    # create_app registers /dashboard and /metrics on the settings' data dir and Redis
    app = create_app(Settings(redis_url=redis_server.url, data_dir=str(tmp_path / "data")))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/dashboard/"
    server.shutdown()
    conn.flushdb()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           "--hide-scrollbars", "--window-size=1240,2440", "--virtual-time-budget=5000",
           *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line and re.search(r"Uncaught|Error|error", line)]  # fmt: skip


def test_dashboard_renders_charts_and_tables_in_chromium(tmp_path, dashboard_url):
    url = dashboard_url + QUERY
    dom_run = chromium(tmp_path, "--dump-dom", url)
    dom = dom_run.stdout
    assert dom_run.returncode == 0, dom_run.stderr[-2000:]
    assert console_errors(dom_run.stderr) == []
    assert 'data-ready="1"' in dom, "the chart script did not finish"
    assert "data-js-errors" not in dom, re.search(r'data-js-errors="([^"]*)"', dom).group(1)

    charts = re.findall(
        r'<figure class="chart[^"]*" data-chart="(\w+)"[^>]*data-marks="(\d+)"', dom
    )
    assert len(charts) == 6, charts
    empty = [name for name, marks in charts if int(marks) == 0]
    assert not empty, f"empty charts: {empty}"
    marks = dict(charts)
    assert int(marks["per_day"]) == 7 and int(marks["per_hour"]) == 7 * 24
    assert dom.count("<rect") >= 7 + 168 + 3 * 3 + 5

    for table in ("annotators", "versions", "preannotation", "training_runs"):
        body = re.search(rf'<table id="table-{table}">.*?<tbody>(.*?)</tbody>', dom, re.S)
        assert body and body.group(1).count("<tr>") >= 1, table
        assert 'class="na"' not in body.group(1), f"table {table} shows its empty state"
    assert dom.count("sqsam-2026.03.0") >= 6 and "65.0%" in dom  # 312 of 480 tasks
    assert "No accepted labels" not in dom

    shot = tmp_path / "dashboard.png"
    shot_run = chromium(tmp_path, f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 20_000, shot_run.stderr[-2000:]
    assert console_errors(shot_run.stderr) == []
    if os.environ.get("SQUEEZESAM_UPDATE_SCREENSHOT") == "1":
        DOCS_PNG.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS_PNG)


def test_empty_dashboard_shows_a_clear_empty_state(tmp_path, dashboard_url):
    dom = chromium(
        tmp_path, "--dump-dom", dashboard_url + "?project=3&from=2025-01-01&to=2025-01-07"
    )
    assert 'data-ready="1"' in dom.stdout and "data-js-errors" not in dom.stdout
    assert "No accepted labels in this period" in dom.stdout
    assert dom.stdout.count("no data in this period") == 6  # every chart says so
