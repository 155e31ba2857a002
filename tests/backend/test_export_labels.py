"""Export of the collected labels: COCO JSON and the shared dataset folder format."""

from __future__ import annotations

import copy
import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from squeezesam.backend import export_labels, webhooks
from squeezesam.backend.store import Store
from squeezesam.models.data import load_set

SHARED = Path(__file__).resolve().parents[3] / "shared"
CAPTURES = Path(os.environ.get("SQUEEZESAM_LS_CAPTURES", SHARED / "labelstudio" / "captures"))
SHARED_DATA = Path(os.environ.get("SQUEEZESAM_SHARED_DATA", SHARED / "data"))
SET = "coco_people_pets"


def capture(name_glob: str) -> dict:
    files = sorted(CAPTURES.glob(name_glob))
    if not files:
        pytest.skip(f"no Label Studio capture {name_glob} in {CAPTURES}")
    return json.loads(files[0].read_text())["request"]["body"]


def shared_samples(count: int) -> list[tuple[str, np.ndarray, list[tuple[int, str]]]]:
    """Real (image id, index mask, [(object, category)]) from the shared COCO set."""
    folder = SHARED_DATA / SET
    if not (folder / "objects.csv").is_file():
        pytest.skip(f"no shared data set at {folder}")
    with open(folder / "objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        out.setdefault(r["image"], []).append((int(r["object"]), r["category"]))
    picked = list(out.items())[:count]
    return [(i, cv2.imread(str(folder / "masks" / f"{i}.png"), -1), objs) for i, objs in picked]


def ls_label(category: str) -> str:
    return {"person": "Person", "cat": "Pet", "dog": "Pet"}.get(category, category.title())


def annotate(store: Store, task_id: int, index: np.ndarray, objs: list[tuple[int, str]]) -> None:
    """Store a Label Studio annotation (capture 62's shape) with these real objects."""
    payload = copy.deepcopy(capture("62_*__ml_webhook.json"))
    template = payload["annotation"]["result"][0]
    regions = []
    for k, category in objs:
        region = copy.deepcopy(template)
        region["original_height"], region["original_width"] = index.shape
        region["value"]["rle"] = mask2rle(np.where(index == k, 255, 0).astype(np.uint8))
        region["value"]["brushlabels"] = [ls_label(category)]
        regions.append(region)
    payload["annotation"].update(id=1000 + task_id, task=task_id, result=regions)
    payload["task"]["id"] = task_id
    payload["task"]["data"]["image"] = f"/data/upload/2/{task_id}.jpg"
    webhooks.handle_event(store, payload)


@pytest.fixture()
def labelled(tmp_path):
    store = Store(tmp_path / "data")
    samples = shared_samples(3)
    for task_id, (_, index, objs) in enumerate(samples, start=1):
        annotate(store, task_id, index, objs)
    yield store, samples
    store.close()


def loader_for(samples, calls: list[str]):
    images = {f"/data/upload/2/{t}.jpg": s[0] for t, s in enumerate(samples, start=1)}

    def load(ref: str) -> np.ndarray:
        calls.append(ref)
        bgr = cv2.imread(str(SHARED_DATA / SET / "images" / f"{images[ref]}.jpg"))
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    return load


def test_coco_json_has_consistent_ids_areas_and_categories(labelled, tmp_path):
    store, samples = labelled
    doc = export_labels.export_coco(store, tmp_path / "coco.json")
    assert json.loads((tmp_path / "coco.json").read_text()) == doc
    assert [i["id"] for i in doc["images"]] == [1, 2, 3]
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(doc["annotations"]) + 1))
    categories = {c["id"]: c["name"] for c in doc["categories"]}
    assert len(set(categories.values())) == len(categories)
    expected = [(t, ls_label(c)) for t, (_, _, objs) in enumerate(samples, 1) for _, c in objs]
    assert [(a["image_id"], categories[a["category_id"]]) for a in doc["annotations"]] == expected
    masks = {t: s[1] for t, s in enumerate(samples, start=1)}
    objects = [k for _, _, objs in samples for k, _ in objs]
    for ann, k in zip(doc["annotations"], objects, strict=True):
        image = doc["images"][ann["image_id"] - 1]
        truth = masks[ann["image_id"]] == k
        assert [image["height"], image["width"]] == ann["segmentation"]["size"]
        assert ann["area"] == int(truth.sum()) == sum(ann["segmentation"]["counts"][1::2])
        assert decode_coco_rle(ann["segmentation"]).tolist() == truth.tolist()
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(truth)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
    person = next(c for c in doc["categories"] if c["name"] == "Person")
    assert person["supercategory"] == "person"


def decode_coco_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    values = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"]).astype(bool)
    return values.reshape((height, width), order="F")


def test_coco_polygons_cover_the_objects(labelled, tmp_path):
    store, samples = labelled
    doc = export_labels.export_coco(store, tmp_path / "c.json", segmentation="polygon")
    first = doc["annotations"][0]
    assert first["segmentation"] and all(len(p) % 2 == 0 for p in first["segmentation"])


def test_folder_export_is_readable_by_the_dataset_format_loader(labelled, tmp_path):
    store, samples = labelled
    calls: list[str] = []
    out = tmp_path / "labelstudio"
    result = export_labels.export_folder(store, out, loader_for(samples, calls))
    assert result == {"images": 3, "objects": sum(len(s[2]) for s in samples), "failed": []}
    loaded = load_set(out)  # the training code's own reader
    assert [s.image_id for s in loaded] == ["p2_t1", "p2_t2", "p2_t3"]
    for sample, (_, truth, objs) in zip(loaded, samples, strict=True):
        image, mask = sample.load_image(), sample.load_mask()
        assert max(image.shape[:2]) <= 512 and mask.shape == image.shape[:2]
        assert mask.dtype == np.uint8
        assert [(o.index, o.category) for o in sample.objects] == [
            (k, ls_label(c)) for k, c in objs
        ]
        assert {o.label for o in sample.objects} <= {"person", "pet", "other"}
        for obj in sample.objects:  # same object, same pixels (up to the resize)
            resized = cv2.resize((truth == obj.index).astype(np.uint8), mask.shape[::-1],
                                 interpolation=cv2.INTER_NEAREST)  # fmt: skip
            assert np.array_equal(mask == obj.index, resized > 0)
    with open(out / "split.csv", newline="") as fh:
        assert {r["split"] for r in csv.DictReader(fh)} <= {"train", "val"}
    # a second export reuses the images already there and drops deleted labels
    store.mark_deleted([1002])
    export_labels.export_folder(store, out, loader_for(samples, calls))
    assert len(calls) == 3
    assert [s.image_id for s in load_set(out)] == ["p2_t1", "p2_t3"]
    assert not (out / "images" / "p2_t2.jpg").exists()


def test_an_unreachable_image_is_reported_and_the_rest_exported(labelled, tmp_path):
    store, samples = labelled
    good = loader_for(samples, [])

    def flaky(ref: str) -> np.ndarray:
        if ref.endswith("/2.jpg"):
            raise ConnectionError("Label Studio is down")
        return good(ref)

    result = export_labels.export_folder(store, tmp_path / "out", flaky)
    assert result["failed"] == ["p2_t2"] and result["images"] == 2


def test_split_is_stable_and_holds_out_about_15_percent():
    ids = [f"p1_t{i}" for i in range(4000)]
    first = [export_labels.split_of(i) for i in ids]
    assert first == [export_labels.split_of(i) for i in ids]  # pure function of the id
    assert 0.13 < first.count("val") / len(ids) < 0.17
    # adding labels never moves an existing image: the split only depends on its own id
    assert [export_labels.split_of(i) for i in ids[:100]] == first[:100]


def test_split_csv_unchanged_for_existing_images_when_labels_arrive(labelled, tmp_path):
    store, samples = labelled
    out = tmp_path / "set"
    export_labels.export_folder(store, out, loader_for(samples, []))
    before = (out / "split.csv").read_text().splitlines()
    _, index, objs = shared_samples(4)[3]
    annotate(store, 4, index, objs)
    extra = shared_samples(4)
    export_labels.export_folder(store, out, loader_for(extra, []))
    after = (out / "split.csv").read_text().splitlines()
    assert after[: len(before)] == before and len(after) == len(before) + 1


@pytest.mark.parametrize(
    ("name", "kind"), [("Person", "person"), ("PET", "pet"), ("pet", "pet"), ("Car", "other")]
)
def test_label_studio_names_map_to_format_labels(name, kind):
    assert export_labels.label_kind(name) == kind
