"""The fine-tuning loop's test harness: a running service (embedded Redis, an
interactive worker, the app's test client), ls_standin.py's Label Studio for reconcile, and
annotations made of real masks from the shared data, shaped like Label Studio's webhooks
(captures 62 and 72). Used by test_training.py."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis
from label_studio_sdk.converter.brush import mask2rle
from rq.job import Job

from squeezesam.backend.app import create_app
from squeezesam.backend.export_labels import split_of
from squeezesam.backend.redis_conn import EmbeddedRedis
from squeezesam.backend.registry import Registry
from squeezesam.backend.store import Store
from squeezesam.backend.store.reads import reading
from squeezesam.backend.store.runs import training_runs
from squeezesam.models.data import discover_sets, load_set, write_set

from .conftest import WorkerPool, click_body, keypoint, load_capture, make_settings
from .ls_standin import TOKEN, StandInLabelStudio

PROJECT = 7
N_LABELS = 7  # 5 train + 2 held-out images (export_labels' md5 split of p7_t<id>)


def _build_test_model(path: Path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_models_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_test_model(path)


# --- labels: real masks from one people/pets set, shaped like capture 62 ------------------


def _people_samples(count: int) -> list:
    root = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", Path(__file__).resolve().parents[3]
                               / "shared" / "data"))  # fmt: skip
    for folder in discover_sets(root):
        samples = [s for s in load_set(folder)
                   if any(o.label in ("person", "pet") for o in s.objects)]  # fmt: skip
        if len(samples) >= count:
            return samples[:count]
    pytest.skip(f"no people/pets set with {count} images under {root}")


def task_ids() -> list[int]:
    val = [t for t in range(1, 500) if split_of(f"p{PROJECT}_t{t}") == "val"][:2]
    train = [t for t in range(1, 500) if split_of(f"p{PROJECT}_t{t}") == "train"][:5]
    return sorted(val + train)


def annotation_events(image_base: str) -> list[dict]:
    """ANNOTATION_CREATED webhooks (capture 62's shape) with real brush masks."""
    template = load_capture("62_*__ml_webhook.json")[0]["request"]["body"]
    out = []
    for n, (task_id, sample) in enumerate(
        zip(task_ids(), _people_samples(N_LABELS), strict=True), start=1
    ):
        index = sample.load_mask()
        height, width = index.shape
        result = []
        for obj in sample.objects:
            mask = np.where(index == obj.index, 255, 0).astype(np.uint8)
            if not mask.any():
                continue
            label = "Pet" if obj.label == "pet" else "Person"
            result.append({
                "from_name": "tag", "to_name": "image", "type": "brushlabels",
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [label]},
                "id": f"r{task_id}_{obj.index}", "origin": "manual",
            })  # fmt: skip
        body = copy.deepcopy(template)
        stamp = f"2026-11-29T18:{n:02d}:00.000000Z"
        body["annotation"] |= {"id": 1000 + task_id, "task": task_id, "project": PROJECT,
                               "result": result, "created_at": stamp,
                               "updated_at": stamp}  # fmt: skip
        body["task"] |= {"id": task_id, "project": PROJECT,
                         "data": {"image": f"{image_base}/{sample.image_path.name}"}}  # fmt: skip
        body["project"] |= {"id": PROJECT}
        out.append(body)
    return out


def start_training_event() -> dict:
    body = copy.deepcopy(load_capture("72_*__ml_webhook.json")[0]["request"]["body"])
    body["project"] |= {"id": PROJECT}
    return body


def small_base(root: Path) -> Path:
    """Two base sets of 6 images each (replay, guard set, int8 calibration stay fast)."""
    shared = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", Path(__file__).resolve().parents[3]
                                 / "shared" / "data"))  # fmt: skip
    for folder in discover_sets(shared)[:2]:
        samples = load_set(folder)
        picked = [s for s in samples if s.split == "train"][:4]
        picked += [s for s in samples if s.split == "val"
                   and any(o.label in ("person", "pet") for o in s.objects)][:2]  # fmt: skip
        write_set(picked, root / folder.name)
    return root


# --- the service under test ------------------------------------------------------------------


class Service:
    def __init__(self, tmp: Path, fake_ls) -> None:
        self.redis_server = EmbeddedRedis()
        # Label Studio's task API for reconcile: tests set `api.tasks`, and `api.fail_until`
        # to take it down
        self.api = StandInLabelStudio({}, label_config="").start()
        model = _build_test_model(tmp / "standin.onnx")
        self.settings = make_settings(
            self.redis_server.url, model, fake_ls,
            label_studio_url=self.api.url, label_studio_api_key=TOKEN,
            data_dir=str(tmp / "data"), train_steps=2, train_size=128, train_batch=2,
            train_gate_clicks=3, train_guard_per_set=1, train_lock_ttl=6,
            model_poll_interval=0.3, train_min_new_labels=0,
        )  # fmt: skip
        self.base = small_base(tmp / "base")
        self.image_base = f"http://{fake_ls.other_host}/public"
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.redis = redis.Redis.from_url(self.settings.redis_url)
        self.pools: list[WorkerPool] = []
        self.serving = self.pool(self.settings)
        self.serving.start("interactive")
        self.serving.wait_alive("interactive", 1)

    def pool(self, settings) -> WorkerPool:
        pool = WorkerPool(settings)
        pool.env["SQUEEZESAM_SHARED_DATA"] = str(self.base)
        self.pools.append(pool)
        return pool

    def train_worker(self, **over) -> WorkerPool:
        pool = self.pool(replace(self.settings, **over))
        pool.start("train")
        pool.wait_alive("train", 1)
        return pool

    def registry(self) -> Registry:
        return Registry(self.settings.registry_path, default_model=self.settings.model_file)

    def runs(self) -> list[dict]:
        store = Store.open(self.settings)
        try:
            with reading(store.engine) as conn:
                return training_runs(conn, PROJECT)
        finally:
            store.close()

    def click_version(self, sample_image: str) -> str:
        body = click_body(self.settings_label_config, sample_image, [keypoint(50, 50, 100, 100)])
        body["project"] = f"{PROJECT}.1"
        answer = self.client.post("/predict", json=body)
        assert answer.status_code == 200, answer.json
        return answer.json["results"][0]["model_version"]

    def close(self) -> None:
        for pool in self.pools:
            pool.stop()
        self.api.stop()
        self.redis_server.close()


def wait_job(service: Service, job_id: str, timeout: float = 240.0) -> dict:
    job = Job.fetch(job_id, connection=service.redis)
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in ("finished", "failed"):
        assert time.monotonic() < deadline, f"training job {job_id} still {job.get_status()}"
        time.sleep(0.5)
    assert job.get_status() == "finished", job.latest_result().exc_string
    return job.return_value()


def wait_version(service: Service, image: str, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := service.click_version(image)) != version:
        assert time.monotonic() < deadline, f"workers still serve {seen}, not {version}"
        time.sleep(0.3)


def stored_annotations(service: Service) -> set[int]:
    store = Store.open(service.settings)
    try:
        return store.annotation_ids(PROJECT)
    finally:
        store.close()
