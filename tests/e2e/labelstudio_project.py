"""The end-to-end tests' shared pieces: the images they upload (person and pet photos
from the shared sets' val splits) and a Label Studio project with our backend connected,
built through Label Studio's own API the way a user connects it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from squeezesam.models.data import discover_sets, load_set

from .conftest import REPO, Backend, LabelStudio

CONFIG = REPO / "annotation_configs" / "people_pets.xml"
LABELS = {"person": "Person", "pet": "Pet"}


# --- the images ---------------------------------------------------------------------------


def shared_data() -> Path:
    return Path(os.environ.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def pick_images(per_label: int = 2) -> list[dict]:
    """Person and pet images with one clear object each, discovered by walking the sets.

    Sets and splits are read by `models.data`, the loader training and evaluation use. An
    image qualifies when it is in the set's held-out `val` split (the product is checked
    on photos the model never trained on, as `squeezesam eval` does) and its only object
    is a person or a pet covering 8-60 % of it; the images come from as many different
    sets as possible.
    """
    candidates: dict[str, list[dict]] = {"person": [], "pet": []}
    for folder in discover_sets(shared_data()):
        taken = {"person": 0, "pet": 0}
        for sample in load_set(folder):  # image-id order; no split.csv: all "train"
            if sample.split != "val" or len(sample.objects) != 1:
                continue
            label = sample.objects[0].label
            if label not in candidates or taken[label] >= per_label:
                continue
            obj = sample.load_mask() == sample.objects[0].index
            if not 0.08 <= obj.mean() <= 0.6:
                continue
            candidates[label].append(
                {"image": sample.image_path, "mask": obj, "label": LABELS[label]}
            )
            taken[label] += 1
    picked = []
    for label, items in candidates.items():
        # one per set first, so the picks span sets
        by_set: dict[Path, list[dict]] = {}
        for item in items:
            by_set.setdefault(item["image"].parent.parent, []).append(item)
        order = [x for group in zip(*by_set.values(), strict=False) for x in group]
        order += [x for x in items if x not in order]
        if not order:
            pytest.fail(f"no {label} image with one object in {shared_data()}")
        picked += order[:per_label]
    return picked


def inner_point(mask: np.ndarray) -> tuple[int, int]:
    """The object pixel farthest from its border (a click a user would make)."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def decode_brush(result: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


# --- the project ----------------------------------------------------------------------------


class Project:
    def __init__(self, ls: LabelStudio, backend: Backend) -> None:
        self.ls, self.backend = ls, backend
        self.images = pick_images()
        self.id = ls.api(
            "POST",
            "/api/projects",
            json={"title": "SqueezeSAM e2e", "label_config": CONFIG.read_text()},
        )["id"]
        files = {f"file{n}": (i["image"].name, i["image"].read_bytes(), "image/jpeg")
                 for n, i in enumerate(self.images)}  # fmt: skip
        imported = ls.api("POST", f"/api/projects/{self.id}/import", files=files)
        assert imported["task_count"] == len(self.images), imported
        tasks = ls.api("GET", f"/api/tasks?project={self.id}&page_size=100")
        tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
        by_name = {t["data"]["image"].rsplit("/", 1)[-1].split("-", 1)[-1]: t for t in tasks}
        for item in self.images:
            item["task"] = by_name[item["image"].name]["id"]
        self.ml = ls.api(
            "POST",
            "/api/ml",
            json={"url": backend.url, "project": self.id, "is_interactive": True,
                  "title": "squeezesam"},
        )  # fmt: skip
        self.ml_id = self.ml["id"]

    def model_version(self) -> str:
        return self.ls.api("GET", f"/api/ml/{self.ml_id}")["model_version"]

    def predictions(self, task: int) -> list[dict]:
        return self.ls.api("GET", f"/api/predictions?task={task}")


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
