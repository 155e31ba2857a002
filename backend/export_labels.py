"""Export the collected labels: COCO JSON, or a dataset folder (../shared/DATASET_FORMAT.md).

Only kept annotations are exported (not deleted, not cancelled). When a task has several
annotations (overlap > 1), the most recently updated one is its ground truth, so an image
appears once. Image ids are `p<project>_t<task>`: stable, unique across projects, and the
key of the held-out split: an image is `val` when the md5 of its id falls in the first
15 % of the hash space, so the split never changes as more labels arrive.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from squeezesam.backend.cloud_storage import task_ref
from squeezesam.backend.csv_cells import safe_row
from squeezesam.backend.labelstudio import match_label
from squeezesam.backend.store import Store
from squeezesam.backend.store.schema import StoredAnnotation

log = logging.getLogger(__name__)

VAL_PERCENT = 15
MAX_SIDE = 512  # the folder format's long-side limit
_ID = re.compile(r"^p\d+_t\d+$")
ImageLoader = Callable[[str], np.ndarray]  # image_ref -> uint8 RGB HxWx3


def image_id(annotation: StoredAnnotation) -> str:
    return f"p{annotation.project_id}_t{annotation.task_id}"


def split_of(image: str, val_percent: int = VAL_PERCENT) -> str:
    """train or val, from the md5 of the image id alone (stable forever)."""
    bucket = int(hashlib.md5(image.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return "val" if bucket < val_percent / 100 else "train"


def label_kind(label_studio_label: str) -> str:
    """Label Studio label name -> person | pet | other (matched by `label_key`: case and
    surrounding spaces do not count, as when the backend labels a model's class)."""
    return match_label(label_studio_label, ("person", "pet")) or "other"


def select(store: Store, project_id: int | None = None) -> list[StoredAnnotation]:
    """One annotation per task (the latest updated), only those with objects."""
    latest: dict[tuple[int, int], StoredAnnotation] = {}
    for a in store.training_annotations(project_id):
        key = (a.project_id, a.task_id)
        best = latest.get(key)
        if best is None or (a.updated_at, a.annotation_id) > (best.updated_at, best.annotation_id):
            latest[key] = a
    return [a for _, a in sorted(latest.items()) if a.objects]


# --- COCO ---------------------------------------------------------------------------------


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE: run lengths over the column-major pixels, zeros first."""
    flat = (mask > 0).flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours as COCO polygons (holes are lost: use RLE when they matter)."""
    contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)  # fmt: skip
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def export_coco(
    store: Store, out_file: str | os.PathLike[str], project_id: int | None = None,
    segmentation: str = "rle",
) -> dict[str, Any]:  # fmt: skip
    """Write COCO instance JSON; returns the document. Categories are the Label Studio
    label names (ids in sorted order); `file_name` is `<image id>.jpg` as in the folder
    export; each image also carries its `ls_image_ref` and `split`."""
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', not {segmentation!r}")
    chosen = select(store, project_id)
    names = sorted({o.label for a in chosen for o in a.objects})
    category = {name: i for i, name in enumerate(names, start=1)}
    images, anns = [], []
    for n, a in enumerate(chosen, start=1):
        first = a.objects[0]
        images.append(
            {
                "id": n,
                "file_name": f"{image_id(a)}.jpg",
                "width": first.width,
                "height": first.height,
                "ls_image_ref": a.image_ref,
                "ls_project": a.project_id,
                "ls_task": a.task_id,
                "ls_annotation": a.annotation_id,
                "split": split_of(image_id(a)),
            }  # fmt: skip
        )
        for obj in a.objects:
            mask = store.load_mask(obj) > 0
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
            seg = coco_rle(mask) if segmentation == "rle" else polygons(mask)
            anns.append({"id": len(anns) + 1, "image_id": n, "category_id": category[obj.label],
                         "segmentation": seg, "area": int(mask.sum()), "bbox": bbox,
                         "iscrowd": 0, "ls_label": obj.label})  # fmt: skip
    doc = {
        "info": {"description": "Label Studio annotations collected by squeezesam"},
        "images": images,
        "annotations": anns,
        "categories": [
            {"id": i, "name": n, "supercategory": label_kind(n)} for n, i in category.items()
        ],  # fmt: skip
    }
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_bytes(out, json.dumps(doc).encode())
    return doc


# --- dataset folder -----------------------------------------------------------------------


def export_folder(
    store: Store, out_dir: str | os.PathLike[str], image_loader: ImageLoader,
    project_id: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write (or refresh) one dataset folder; returns counts and the ids that failed.

    Images are fetched through `image_loader` only when `images/<id>.jpg` is not there yet
    (a task's image does not change). Masks, objects.csv and split.csv are rewritten every
    time, and files of images no longer exported (deleted labels) are removed. Where
    objects overlap, the later region wins the pixel (the format allows one value per
    pixel); pixels no region covers are background (0).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    objects_rows: list[list[Any]] = []
    split_rows: list[list[str]] = []
    failed: list[str] = []
    kept: set[str] = set()
    for a in select(store, project_id):
        name = image_id(a)
        try:
            rows = _export_one(store, a, out, name, image_loader)
        except Exception as exc:  # one unreachable image must not stop the export
            log.warning("export: skipping %s (%s): %s", name, a.image_ref, exc)
            failed.append(name)
            continue
        kept.add(name)
        objects_rows += rows
        split_rows.append([name, split_of(name)])
    for folder, suffix in (("images", ".jpg"), ("masks", ".png")):
        for path in (out / folder).glob(f"*{suffix}"):
            if _ID.match(path.stem) and path.stem not in kept:
                path.unlink()
    _write_csv(out / "objects.csv", ["image", "object", "label", "category"], objects_rows)
    _write_csv(out / "split.csv", ["image", "split"], split_rows)
    _atomic_bytes(out / "README.md", _README.encode())
    return {"images": len(kept), "objects": len(objects_rows), "failed": failed}


def _export_one(
    store: Store, a: StoredAnnotation, out: Path, name: str, image_loader: ImageLoader
) -> list[list[Any]]:
    height, width = a.objects[0].height, a.objects[0].width
    index = np.zeros((height, width), np.uint8)
    labels: dict[int, str] = {}
    for k, obj in enumerate(a.objects[:254], start=1):  # 1..254 are object values
        mask = store.load_mask(obj)
        if mask.shape != index.shape:  # regions of one task share the image size
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        index[mask > 0] = k
        labels[k] = obj.label
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image_path = out / "images" / f"{name}.jpg"
    if not image_path.is_file():
        # a cloud-storage URI is fetched through its task's presign path (cloud_storage.py)
        image = np.asarray(image_loader(task_ref(a.image_ref or "", a.task_id)))
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image loader returned shape {image.shape}, expected HxWx3")
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])  # fmt: skip
        if not ok:
            raise ValueError("JPEG encoding failed")
        _atomic_bytes(image_path, jpg.tobytes())
    else:  # keep the mask the size of the image already there
        existing = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
        size = (existing.shape[1], existing.shape[0]) if existing is not None else size
    if size != (width, height):
        index = cv2.resize(index, size, interpolation=cv2.INTER_NEAREST)
    present = set(np.unique(index).tolist())
    ok, png = cv2.imencode(".png", index)
    _atomic_bytes(out / "masks" / f"{name}.png", png.tobytes())
    return [[name, k, label_kind(lab), lab] for k, lab in labels.items() if k in present]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(safe_row(row) for row in rows)  # formula-like text: a leading '
    _atomic_bytes(path, buf.getvalue().encode())


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_README = """# Label Studio annotations (exported by `squeezesam labels export --format folder`)

Source: annotations accepted in Label Studio and collected by the squeezesam ML backend
(webhooks + reconcile). Image ids are `p<project>_t<task>`. `category` is the Label Studio
label name; `label` maps Person -> person, Pet -> pet, anything else -> other.
A text cell starting with = + - @, a tab or a CR has a leading ' (not a formula).
Pixels no annotator region covers are background (0). `split.csv`: val = md5(image id)
in the first 15 % of the hash space; stable as labels are added.
Licence: that of the annotated images (see the Label Studio project).
"""
