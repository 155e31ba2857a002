"""A local stand-in for Label Studio's REST API (the parts pre-annotation uses).

Serves /api/projects/<id>/, /api/tasks/ (paginated like DRF), /api/tasks/<id>/,
POST /api/predictions/, GET /api/ml/ (the project's ML backends: `ml_backends`) and
/data/upload/<project>/<hex>-<name> images from a folder, with the legacy-token auth
Label Studio uses, and records what it receives. Failures can be injected:
`fail_until` (monotonic time) answers 503 to every /api call until then.

Cloud storage like Label Studio 1.23 (io_storages/proxy_api.py): tasks added with
`add_cloud_tasks` hold `s3://`, `gs://` or `azure-blob://` URIs; `/tasks/<id>/presign/
?fileuri=<urlsafe base64>` (token required, the URI must be the task's) answers 303 to
the "bucket" (`/bucket/<scheme>/<name>?X-Amz-Signature=...`, no auth, served under
`bucket_host`, another origin) when `presign` is on, else the bytes (proxied). What the
bucket received: `bucket_requests` (path, Authorization header).
Used by tests/backend/test_preannotate.py, test_cloud_storage.py and
benchmarks/preannotate_throughput.py.
"""

from __future__ import annotations

import base64
import binascii
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
        self.ml_backends: list[dict[str, Any]] = []  # GET /api/ml/?project=
        self.presign = True  # cloud storage "presign" on: 303 to the bucket; off: bytes
        self.bucket_requests: list[tuple[str, str]] = []  # (path, Authorization)
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

    @property
    def bucket_host(self) -> str:
        """The bucket's origin: this server under another host name (IMAGE_ALLOWED_HOSTS)."""
        return f"localhost:{self.server.server_port}"

    def add_cloud_tasks(self, project: int, uris: list[str]) -> list[int]:
        """Tasks whose image is a cloud URI (`s3://bucket/<name>`...); <name> is served."""
        ids = self.add_tasks(project, ["x"] * len(uris))
        with self.lock:
            for task_id, uri in zip(ids, uris, strict=True):
                self.tasks[task_id]["data"]["image"] = uri
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
            if request.path.startswith("/bucket/"):  # the storage: signed URL, no token
                self.bucket_requests.append(
                    (request.path, request.headers.get("Authorization", ""))
                )
                return None
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

        @app.get("/api/ml/")
        def ml_backends():
            project = request.args.get("project", type=int)
            return jsonify([b for b in self.ml_backends if b.get("project") == project])

        @app.get("/tasks/<int:task_id>/presign/")
        def presign(task_id: int):
            try:
                uri = base64.urlsafe_b64decode(request.args.get("fileuri", "").encode()).decode()
            except (binascii.Error, UnicodeDecodeError):
                abort(404)
            task = self.tasks.get(task_id)
            if task is None or task["data"].get("image") != uri:
                abort(404)  # Label Studio: no storage of the task's project for this URI
            scheme, _, rest = uri.partition("://")
            name = rest.rsplit("/", 1)[-1]
            if not self.presign:  # proxied by Label Studio itself
                return self._image(name)
            location = f"http://{self.bucket_host}/bucket/{scheme}/{name}?X-Amz-Signature=s3cr3t"
            return "", 303, {"Location": location}

        @app.get("/bucket/<scheme>/<name>")
        def bucket(scheme: str, name: str):
            if request.args.get("X-Amz-Signature") != "s3cr3t":
                return "AccessDenied", 403
            return self._image(name)

        @app.get("/data/upload/<int:project>/<name>")
        def upload(project: int, name: str):
            data = self.images.get(name.split("-", 1)[-1])
            if data is None:
                abort(404)
            return data, 200, {"Content-Type": "image/jpeg"}

        return app

    def _image(self, name: str):
        data = self.images.get(name)
        if data is None:
            abort(404)
        return data, 200, {"Content-Type": "image/jpeg"}
