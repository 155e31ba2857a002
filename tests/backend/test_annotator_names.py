"""Annotator names on the dashboard (issue 22): emails or usernames from Label Studio's
users API (`GET /api/users/`, token required, as Label Studio 1.23 answers it), cached
for a bounded time, the numeric ids when Label Studio is unreachable. The stand-in here
is a real HTTP server; tests/e2e checks the same against the real Label Studio."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from flask import Flask

from squeezesam.backend import annotators
from squeezesam.backend.annotators import AnnotatorNames
from squeezesam.backend.dashboard import init_dashboard
from squeezesam.backend.settings import Settings
from squeezesam.backend.store import Store
from squeezesam.backend.store.schema import AnnotationRecord

TOKEN = "0123456789abcdef0123456789abcdef01234567"
USERS = [  # the fields of Label Studio 1.23's /api/users/ items that matter here
    {"id": 1, "email": "lead@example.com", "username": "lead", "first_name": "", "last_name": ""},
    {"id": 2, "email": "", "username": "anna", "first_name": "Anna", "last_name": "K"},
]


class UsersAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: UsersAPI

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.hits += 1
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            status, body = 401, {"detail": "Authentication credentials were not provided."}
        elif self.path.split("?")[0] == "/api/users/":
            status, body = 200, USERS
        else:
            status, body = 404, {"detail": "Not found."}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def users_api():
    server = UsersAPI()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_names_come_from_the_users_api_and_are_cached_for_a_bounded_time(users_api):
    clock = Clock()
    names = AnnotatorNames(Settings(label_studio_url=users_api.url, label_studio_api_key=TOKEN),
                           clock=clock)  # fmt: skip
    assert names.names() == {1: "lead@example.com", 2: "anna"}  # email, else username
    assert names.label(1) == "lead@example.com (id 1)" and names.label(7) == "7"
    assert users_api.hits == 1
    clock.now += annotators.NAMES_TTL - 1
    names.names()
    assert users_api.hits == 1  # cached
    clock.now += 2
    names.names()
    assert users_api.hits == 2  # stale: asked again


def test_unreachable_label_studio_leaves_ids_and_is_not_asked_on_every_page(users_api):
    clock = Clock()
    url = users_api.url
    users_api.shutdown()
    users_api.server_close()  # nothing listens there now
    names = AnnotatorNames(Settings(label_studio_url=url, label_studio_api_key=TOKEN),
                           clock=clock)  # fmt: skip
    assert names.names() == {} and names.label(1) == "1"
    assert "users API failed" in names.error
    calls = []
    names.fetch = lambda: calls.append(1) or USERS
    names.names()
    assert calls == []  # the failure is remembered for FAILURE_TTL s
    clock.now += annotators.FAILURE_TTL + 1
    assert names.names()[1] == "lead@example.com" and names.error == ""


def test_a_refused_token_leaves_ids(users_api):
    names = AnnotatorNames(Settings(label_studio_url=users_api.url,
                                    label_studio_api_key="f" * 40))  # fmt: skip
    assert names.names() == {} and "users API failed" in names.error


def _dashboard(store: Store, settings: Settings):
    app = Flask("t")
    app.config["SETTINGS"] = settings
    init_dashboard(app, engine=store.engine)
    return app.test_client()


def test_the_dashboard_shows_annotator_names_and_ids_as_fallback(users_api, tmp_path):
    store = Store(tmp_path)
    when = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for aid, who in ((1, 1), (2, 2), (3, 9)):  # user 9: not in Label Studio (deleted)
        store.save_annotation(AnnotationRecord(aid, 5, 100 + aid, None, when, created_at=when,
                                               annotator=who, lead_time=10.0))  # fmt: skip
    client = _dashboard(store, Settings(label_studio_url=users_api.url,
                                        label_studio_api_key=TOKEN))  # fmt: skip
    rows = {r["annotator"]: r["name"] for r in client.get("/dashboard/data.json?project=5")
            .get_json()["annotators"]}  # fmt: skip
    assert rows == {1: "lead@example.com", 2: "anna", 9: "user 9"}
    page = client.get("/dashboard/?project=5").get_data(as_text=True)
    assert "lead@example.com" in page and "anna" in page
    csv = client.get("/dashboard/annotators.csv?project=5").get_data(as_text=True)
    assert "lead@example.com" in csv

    users_api.shutdown()  # Label Studio goes away: a fresh app (no cache) shows the ids
    users_api.server_close()
    client = _dashboard(store, Settings(label_studio_url=users_api.url,
                                        label_studio_api_key=TOKEN))  # fmt: skip
    data = client.get("/dashboard/data.json?project=5").get_json()
    assert {r["name"] for r in data["annotators"]} == {"user 1", "user 2", "user 9"}
    page = client.get("/dashboard/?project=5").get_data(as_text=True)
    assert 'id="annotator-names-error"' in page
    store.close()
