"""A local stand-in for Label Studio's REST API (the parts pre-annotation uses).

Serves /api/projects/<id>/, /api/tasks/ (paginated like DRF), /api/tasks/<id>/,
POST /api/predictions/ and /data/upload/<project>/<hex>-<name> images from a folder,
with the legacy-token auth Label Studio uses, and records what it receives. Failures
can be injected: `fail_until` (monotonic time) answers 503 to every /api call until
then. Used by tests/backend/test_preannotate.py and benchmarks/preannotate_throughput.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, request
from werkzeug.serving import make_server

TOKEN = "0123456789abcdef0123456789abcdef01234567"


class StandInLabelStudio:
    def __init__(self, images: dict[str, bytes], label_config: str) -> None:
        self.images = images  # file name -> bytes, served under /data/upload/<p>/<hex>-<name>
        self.label_config = label_config
        self.tasks: dict[int, dict[str, Any]] = {}
        self.predictions: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.fail_until = 0.0
        self.failed_calls = 0
        self.lock = threading.Lock()
        self.app = self._build()
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @classmethod
    def from_folder(cls, files: list[Path], label_config: str) -> StandInLabelStudio:
        return cls({f.name: f.read_bytes() for f in files}, label_config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> StandInLabelStudio:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def add_tasks(self, project: int, names: list[str]) -> list[int]:
        ids = []
        with self.lock:
            for name in names:
                task_id = len(self.tasks) + 1
                ref = f"/data/upload/{project}/{task_id:08x}-{name}"
                self.tasks[task_id] = {
                    "id": task_id,
                    "project": project,
                    "data": {"image": ref},
                    "annotations": [],
                    "drafts": [],
                }
                ids.append(task_id)
        return ids

    def predictions_of(self, task_id: int) -> list[dict[str, Any]]:
        return [p for p in self.predictions if p["task"] == task_id]

    def _task(self, task_id: int) -> dict[str, Any]:
        return self.tasks[task_id] | {"predictions": self.predictions_of(task_id)}

    def _build(self) -> Flask:
        app = Flask("standin-label-studio")

        @app.before_request
        def guard():
            self.requests.append((request.method, request.path))
            if request.headers.get("Authorization") != f"Token {TOKEN}":
                return jsonify(detail="Authentication credentials were not provided."), 401
            if request.path.startswith("/api/") and time.monotonic() < self.fail_until:
                self.failed_calls += 1
                return jsonify(detail="service unavailable"), 503
            return None

        @app.get("/api/projects/<int:project>/")
        def project(project: int):
            return jsonify(id=project, title=f"project {project}", label_config=self.label_config)

        @app.get("/api/tasks/")
        def tasks():
            project = request.args.get("project", type=int)
            page = request.args.get("page", 1, type=int)
            size = request.args.get("page_size", 100, type=int)
            with self.lock:
                ids = sorted(t for t, v in self.tasks.items() if v["project"] == project)
                chunk = ids[(page - 1) * size : page * size]
                if page > 1 and not chunk:
                    abort(404)
                items = [self._task(t) for t in chunk]
            return jsonify(tasks=items, total=len(ids), total_annotations=0,
                           total_predictions=sum(len(t["predictions"]) for t in items))  # fmt: skip

        @app.get("/api/tasks/<int:task_id>/")
        def task(task_id: int):
            with self.lock:
                if task_id not in self.tasks:
                    abort(404)
                return jsonify(self._task(task_id))

        @app.post("/api/predictions/")
        def create_prediction():
            body = request.get_json(force=True)
            with self.lock:
                if body.get("task") not in self.tasks:
                    return jsonify(detail="task does not exist"), 400
                item = {"id": len(self.predictions) + 1, "task": body["task"],
                        "result": body.get("result"), "score": body.get("score"),
                        "model_version": body.get("model_version"),
                        "created_at": "2025-01-01T00:00:00Z"}  # fmt: skip
                self.predictions.append(item)
            return jsonify(item), 201

        @app.get("/data/upload/<int:project>/<name>")
        def upload(project: int, name: str):
            data = self.images.get(name.split("-", 1)[-1])
            if data is None:
                abort(404)
            return data, 200, {"Content-Type": "image/jpeg"}

        return app
