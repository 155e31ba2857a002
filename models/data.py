"""Image sets in the shared dataset folder format (see shared/DATASET_FORMAT.md).

Any folder holding `images/`, `masks/` and `objects.csv` is a set; sets are
discovered by walking a root, never named in code.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

VOID = 255
LABELS = ("person", "pet", "other", "salient")
# Class head targets: salient objects carry no class (-1: ignored by the loss).
CLASS_INDEX = {"person": 0, "pet": 1, "other": 2, "salient": -1}
SALIENT_MIN_AREA = 0.08  # an "other" object covering this share of the image is salient


def salient_objects(labels: dict[int, str], areas: dict[int, float]) -> list[int]:
    """What zero-click mode should find (training targets and evaluation alike): every
    person, pet or salient region, and "other" objects of at least SALIENT_MIN_AREA."""
    return [k for k, lab in labels.items() if lab != "other" or areas[k] >= SALIENT_MIN_AREA]


def default_data_root() -> Path:
    """`SQUEEZESAM_SHARED_DATA`, else `../shared/data` next to the repository."""
    env = os.environ.get("SQUEEZESAM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class ObjectInfo:
    index: int  # value in the mask
    label: str
    category: str


@dataclass
class Sample:
    set_name: str
    image_id: str
    split: str
    image_path: Path
    mask_path: Path
    objects: list[ObjectInfo]
    part_paths: dict[int, Path] = field(default_factory=dict)

    def load_image(self) -> np.ndarray:
        """uint8 RGB (H, W, 3)."""
        bgr = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode {self.image_path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def load_mask(self) -> np.ndarray:
        """uint8 (H, W) index map: 0 background, k object k, 255 void."""
        mask = cv2.imread(str(self.mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise ValueError(f"cannot decode {self.mask_path}")
        return mask if mask.ndim == 2 else mask[..., 0]

    def load_parts(self, index: int) -> np.ndarray | None:
        path = self.part_paths.get(index)
        if path is None:
            return None
        parts = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if parts is None else parts


def is_set(folder: Path) -> bool:
    return (
        (folder / "images").is_dir()
        and (folder / "masks").is_dir()
        and (folder / "objects.csv").is_file()
    )


def discover_sets(root: Path) -> list[Path]:
    """The set folders under `root` (or `root` itself if it is a set), sorted by name."""
    root = Path(root)
    if is_set(root):
        return [root]
    found = [p for p in sorted(root.rglob("*")) if p.is_dir() and is_set(p)]
    return found


def load_set(folder: Path) -> list[Sample]:
    """All samples of one set, in image-id order."""
    folder = Path(folder)
    objects: dict[str, list[ObjectInfo]] = {}
    with open(folder / "objects.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            objects.setdefault(row["image"], []).append(
                ObjectInfo(int(row["object"]), row["label"], row.get("category") or "")
            )
    splits: dict[str, str] = {}
    split_file = folder / "split.csv"
    if split_file.is_file():
        with open(split_file, newline="") as fh:
            splits = {row["image"]: row["split"] for row in csv.DictReader(fh)}
    samples = []
    for image_id in sorted(objects):
        image_path = folder / "images" / f"{image_id}.jpg"
        mask_path = folder / "masks" / f"{image_id}.png"
        if not (image_path.is_file() and mask_path.is_file()):
            continue
        parts = {}
        for obj in objects[image_id]:
            part = folder / "parts" / f"{image_id}_{obj.index}.png"
            if part.is_file():
                parts[obj.index] = part
        samples.append(
            Sample(
                folder.name,
                image_id,
                splits.get(image_id, "train"),
                image_path,
                mask_path,
                objects[image_id],
                parts,
            )
        )
    return samples


def load_samples(root: Path, split: str | None = None) -> list[Sample]:
    samples = [s for folder in discover_sets(root) for s in load_set(folder)]
    return [s for s in samples if split is None or s.split == split]


def write_set(
    samples: list[Sample], out: Path, split_of: dict[str, str] | None = None, link: bool = False
) -> Path:
    """Write samples as a new set folder in the shared format (a subset, a stand-in
    project): images, masks and parts copied (or symlinked with `link`), objects.csv and
    split.csv; `split_of` overrides a sample's split by image id."""
    out = Path(out)
    for sub in ("images", "masks", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    place = os.symlink if link else shutil.copy
    with (
        open(out / "objects.csv", "w", newline="") as fo,
        open(out / "split.csv", "w", newline="") as fs,
    ):
        objects, splits = csv.writer(fo), csv.writer(fs)
        objects.writerow(["image", "object", "label", "category"])
        splits.writerow(["image", "split"])
        for s in samples:
            for path, sub in [(s.image_path, "images"), (s.mask_path, "masks")] + [
                (p, "parts") for p in s.part_paths.values()
            ]:
                place(path, out / sub / path.name)
            splits.writerow([s.image_id, (split_of or {}).get(s.image_id, s.split)])
            for o in s.objects:
                objects.writerow([s.image_id, o.index, o.label, o.category])
    return out
