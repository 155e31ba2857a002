"""Training examples: whole-object targets, the paper's augmentations, simulated clicks.

One example is (network input, target, valid-pixel weight, class). Augmentations
follow SqueezeSAM (arXiv 2312.06736, section 3) and DESIGN.md:
- mask merging: a person and the small objects they touch become one target;
- saliency crops: the crop window is placed around the targets (zero-click examples);
  click examples place it anywhere around the target, so no centre prior stands in for
  the click;
- outlier injection: a distractor object pasted elsewhere stays background;
- copy-paste scenes (Ghiasi et al., CVPR 2021): people/pets pasted into other photos,
  each its own object, hiding what is behind them (zero-click scenes, and occluders in
  front of a clicked object, so a click learns to mean one instance);
- look-alike instances: copies of the clicked object (or other people/pets) pasted
  beside it, the target chosen among them, so a click must say which one it means;
- over-merge corrections: a previous mask holding the target and a neighbour, with a
  negative click on the neighbour (the merge above is a default, never a must);
- crowds (opt-in, `--crowd-p`): 3-8 people/pets pasted small and overlapping; zero-click
  examples then target every person/pet in view, click examples one of the small ones;
- object views (opt-in, `--object-view-p`): a click example cropped to its target's box
  and letterboxed, as the predictor's zoom-in and focus view show an object;
- protocol first clicks (opt-in, `--interior-click-p`): the first click at the target's
  most interior point, where evaluation puts it, instead of anywhere inside;
- flips, scale, colour jitter, blur.
Clicks come from `click_simulation.py` (the shared clicker on synthetic previous masks,
and over-merge corrections); each example also keeps its crop and first click so
`train.rollout` can replace the later ones with RITM's no-grad rollouts (clicks placed on
the network's own errors).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from squeezesam.models.click_simulation import simulate_clicks
from squeezesam.models.clicks import Click, encode_prompt
from squeezesam.models.crops import (
    CLICK_JITTER,
    MAX_SCALE,
    OBJECT_VIEW_P,
    SALIENCY_JITTER,
    object_view,
    scale_and_crop,
)
from squeezesam.models.data import CLASS_INDEX, VOID, Sample, salient_objects

# Share of click examples whose later clicks come from no-grad rollouts (train.rollout)
# instead of synthetic previous masks: the one default of base training, fine-tuning and
# their command lines (here, not in train.py, so the CLI reads it without torch).
ROLLOUT_P = 0.5
# Share of click examples given look-alike instances (copies of the clicked object or other
# people/pets pasted beside it), the clicked one chosen at random among them: most sets
# hold one salient object per photo, so without these a click need not say *which* one.
INSTANCES_P = 0.3
# Share of click examples (with another object in the crop) whose synthetic previous mask
# wrongly holds that object too, so the clicker's next click is a negative one on it.
# s20700 ignored such clicks in COCO scenes (an umbrella click gave umbrella + person, and
# 19 negative clicks on the person changed nothing): its synthetic errors were only blobs,
# and rollouts seldom over-merge on the photos the network has fitted.
OVERMERGE_P = 0.35
# Share of examples made crowd scenes (see the module doc). Zero-click pre-annotation finds
# few of the people in COCO scenes (recall 0.44 on coco128_seg, s21500): most training
# photos hold one large subject. 0 unless a training phase asks for it (--crowd-p).
CROWD_P = 0.0
# Share of click examples whose first click is the evaluation protocol's (the object's
# most interior point) rather than anywhere inside: train-base --interior-click-p. Off by
# default: a click anywhere (a shirt) must still give the whole object.
INTERIOR_CLICK_P = 0.0
# Size of a crowd's pasted objects, in the photo's long side (at serving's long side 512:
# about 30-150 px, from the 32 px the recall figure counts).
CROWD_SCALE = (0.06, 0.3)


@dataclass
class Loaded:
    """A sample decoded once and kept in memory for the whole run."""

    image: np.ndarray  # uint8 RGB
    mask: np.ndarray  # uint8 index map
    labels: dict[int, str]  # object index -> label
    areas: dict[int, float]  # object index -> share of the image

    @classmethod
    def from_sample(cls, sample: Sample) -> Loaded:
        mask = sample.load_mask()
        counts = np.bincount(mask.ravel(), minlength=256)
        total = float(mask.size)
        labels = {o.index: o.label for o in sample.objects if counts[o.index] > 0}
        return cls(sample.load_image(), mask, labels, {k: counts[k] / total for k in labels})

    def salient(self) -> list[int]:
        return salient_objects(self.labels, self.areas)


@dataclass
class Example:
    input: np.ndarray  # float32 (6, S, S)
    target: np.ndarray  # float32 (S, S) in {0, 1}
    weight: np.ndarray  # float32 (S, S): 0 on void and padding-free void
    cls: int  # class index or -1
    zero_click: bool
    image: np.ndarray | None = None  # uint8 crop the input was encoded from (rollouts)
    first: Click | None = None  # the first simulated click (rollouts restart from it)
    keep_clicks: bool = False  # over-merge corrections: a rollout must not replace them


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = image.astype(np.float32)
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25)  # contrast, brightness
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.6, 1.4)  # saturation
    if rng.random() < 0.1:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    return np.clip(img, 0, 255).astype(np.uint8)


def paste(
    image: np.ndarray,
    mask: np.ndarray,
    donor: Loaded,
    donor_index: int,
    new_index: int,
    rng: np.random.Generator,
    avoid: np.ndarray | None = None,
    scale_range: tuple[float, float] = (0.25, 0.6),
) -> bool:
    """Paste one donor object (cut along its mask) into image/mask in place, its long side
    drawn in `scale_range` of the image's.

    The pasted pixels take `new_index`, so what they hide leaves the objects behind.
    With `avoid`, placements overlapping it are rejected (outlier injection).
    """
    obj = donor.mask == donor_index
    ys, xs = np.nonzero(obj)
    if len(ys) < 20:
        return False
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = mask.shape
    scale = rng.uniform(*scale_range) * max(h, w) / max(y1 - y0, x1 - x0)
    nh, nw = max(4, int((y1 - y0) * scale)), max(4, int((x1 - x0) * scale))
    if nh >= h or nw >= w:
        return False
    crop_img = cv2.resize(donor.image[y0:y1, x0:x1], (nw, nh), interpolation=cv2.INTER_LINEAR)
    crop_obj = cv2.resize(obj[y0:y1, x0:x1].astype(np.uint8), (nw, nh), cv2.INTER_NEAREST) > 0
    if rng.random() < 0.5:
        crop_img, crop_obj = crop_img[:, ::-1], crop_obj[:, ::-1]
    for _ in range(5):
        ty, tx = int(rng.integers(0, h - nh)), int(rng.integers(0, w - nw))
        if avoid is not None and (avoid[ty : ty + nh, tx : tx + nw] & crop_obj).any():
            continue
        region = image[ty : ty + nh, tx : tx + nw]
        region[crop_obj] = crop_img[crop_obj]
        mask[ty : ty + nh, tx : tx + nw][crop_obj] = new_index
        return True
    return False


class ExampleMaker:
    """Draws random training examples from decoded samples."""

    def __init__(
        self,
        loaded: list[Loaded],
        size: int,
        zero_click_p: float = 0.3,
        max_scale: float = MAX_SCALE,
        crowd_p: float = CROWD_P,
        crowd_clicks: bool = True,
        object_view_p: float = OBJECT_VIEW_P,
        interior_click_p: float = INTERIOR_CLICK_P,
    ) -> None:
        self.loaded = loaded
        self.object_view_p = object_view_p
        self.interior_click_p = interior_click_p
        self.size = size
        self.max_scale = max_scale
        self.crowd_p = crowd_p
        # False: crowds only in zero-click examples (pre-annotation learns to find every
        # person/pet; click examples keep the single-subject mix that 1-click quality needs)
        self.crowd_clicks = crowd_clicks
        self.zero_click_p = zero_click_p
        # Donors: people and pets for copy-paste scenes; any sizeable object as outlier.
        self.people_pets = [
            (i, k)
            for i, s in enumerate(loaded)
            for k, lab in s.labels.items()
            if lab in ("person", "pet") and s.areas[k] > 0.02
        ]
        self.any_objects = [
            (i, k) for i, s in enumerate(loaded) for k in s.labels if s.areas[k] > 0.02
        ]
        # Scenes with several objects are scarce (COCO) yet teach what one-object portraits
        # cannot: which of several people a click means. Draw them 3x as often.
        weights = np.array([3.0 if len(s.labels) > 1 else 1.0 for s in loaded])
        self.cumulative = np.cumsum(weights / weights.sum()) if len(loaded) else np.zeros(0)

    def sample_index(self, rng: np.random.Generator) -> int:
        return int(min(np.searchsorted(self.cumulative, rng.random()), len(self.loaded) - 1))

    def add_instances(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        index: int,
        main: int,
        targets: set[int],
        next_index: int,
        rng: np.random.Generator,
    ) -> tuple[set[int], str, int]:
        """Paste 1-3 look-alikes (the clicked object itself, or another person/pet) where
        they do not hide the target; then, half the time, one of them becomes the target.
        Returns (targets, the target's label, next free index)."""
        s = self.loaded[index]
        labels: dict[int, str] = {}
        avoid = np.isin(mask, list(targets))  # fixed: pastes never cover the target
        for _ in range(int(rng.integers(1, 4))):
            if not self.people_pets or rng.random() < 0.5:
                donor, key = s, main
            else:
                di, key = self.people_pets[int(rng.integers(len(self.people_pets)))]
                donor = self.loaded[di]
            if paste(image, mask, donor, key, next_index, rng, avoid=avoid):
                labels[next_index] = donor.labels[key]
                next_index += 1
        visible = [k for k in labels if (mask == k).sum() >= 64]
        if visible and rng.random() < 0.5:
            chosen = visible[int(rng.integers(len(visible)))]
            return {chosen}, labels[chosen], next_index
        return targets, s.labels[main], next_index

    def add_crowd(
        self, image: np.ndarray, mask: np.ndarray, next_index: int, rng: np.random.Generator
    ) -> tuple[dict[int, str], int]:
        """Paste 3-8 people/pets small (CROWD_SCALE), later ones hiding earlier ones.
        Returns ({index: label} of those still visible, next free index)."""
        labels: dict[int, str] = {}
        for _ in range(int(rng.integers(3, 9))):
            di, dk = self.people_pets[int(rng.integers(len(self.people_pets)))]
            if paste(image, mask, self.loaded[di], dk, next_index, rng, scale_range=CROWD_SCALE):
                labels[next_index] = self.loaded[di].labels[dk]
                next_index += 1
        visible = {k: lab for k, lab in labels.items() if (mask == k).sum() >= 64}
        return visible, next_index

    def make(self, index: int, rng: np.random.Generator) -> Example | None:
        s = self.loaded[index]
        image, mask = s.image.copy(), s.mask.copy()
        if not s.labels:
            return None
        zero_click = rng.random() < self.zero_click_p and bool(s.salient())
        next_index = 200
        # no draw when crowds are off: the default recipe's random stream stays as it was
        crowd = (
            self.crowd_p > 0
            and bool(self.people_pets)
            and (zero_click or self.crowd_clicks)
            and rng.random() < self.crowd_p
        )
        pasted: dict[int, str] = {}
        if crowd:
            pasted, next_index = self.add_crowd(image, mask, next_index, rng)
        if zero_click and crowd:  # every person/pet in view, the photo's own ones too
            people = {k for k, lab in s.labels.items() if lab in ("person", "pet")}
            targets = set(s.salient()) | people | set(pasted)
            cls = -1
        elif not zero_click and pasted:  # a click on one of the crowd
            chosen = list(pasted)[int(rng.integers(len(pasted)))]
            targets, cls = {chosen}, CLASS_INDEX[pasted[chosen]]
        elif zero_click:
            targets = set(s.salient())
            if self.people_pets and rng.random() < 0.3:  # copy-paste scene
                for _ in range(int(rng.integers(1, 3))):
                    di, dk = self.people_pets[int(rng.integers(len(self.people_pets)))]
                    if di != index and paste(image, mask, self.loaded[di], dk, next_index, rng):
                        targets.add(next_index)
                        next_index += 1
            cls = -1
        else:
            keys = list(s.labels)
            weights = np.array([3.0 if s.labels[k] in ("person", "pet") else 1.0 for k in keys])
            weights *= np.array([s.areas[k] > 0.002 for k in keys], dtype=float) + 1e-3
            main = keys[int(rng.choice(len(keys), p=weights / weights.sum()))]
            targets = {main}
            if s.labels[main] == "person" and rng.random() < 0.25:  # mask merging
                ring = cv2.dilate((mask == main).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
                for k in np.unique(mask[ring]):
                    if k not in (0, VOID, main) and s.labels.get(k) == "other":
                        if s.areas[k] < s.areas[main]:
                            targets.add(int(k))
            if self.any_objects and rng.random() < 0.25:  # outlier injection
                di, dk = self.any_objects[int(rng.integers(len(self.any_objects)))]
                if di != index:
                    avoid = np.isin(mask, list(targets))
                    paste(image, mask, self.loaded[di], dk, next_index, rng, avoid=avoid)
                    next_index += 1
            label = s.labels[main]
            if rng.random() < INSTANCES_P:
                targets, label, next_index = self.add_instances(
                    image, mask, index, main, targets, next_index, rng
                )
            if self.people_pets and rng.random() < 0.15:  # an occluding person or pet
                di, dk = self.people_pets[int(rng.integers(len(self.people_pets)))]
                if di != index:
                    paste(image, mask, self.loaded[di], dk, next_index, rng)
            cls = CLASS_INDEX[label]
        focus = np.isin(mask, list(targets))
        # Zero-click: a saliency crop (centre near the objects). Click examples: the target
        # anywhere in the window, so the click, not a centre prior, says which object.
        jitter = SALIENCY_JITTER if zero_click else CLICK_JITTER
        if (  # no draw when object views are off, as for crowds
            not zero_click
            and self.object_view_p > 0
            and focus.any()
            and rng.random() < self.object_view_p
        ):
            image, mask = object_view(image, mask, focus, self.size, rng)
        else:
            image, mask = scale_and_crop(image, mask, focus, self.size, rng, jitter, self.max_scale)
        if rng.random() < 0.5:
            image, mask = image[:, ::-1].copy(), mask[:, ::-1].copy()
        image = color_jitter(image, rng)
        target = np.isin(mask, list(targets))
        void = mask == VOID
        if not zero_click:
            if target.sum() < 16:
                return None
            clicks, prev, merged = self.click_prompt(mask, target, void, rng)
        else:
            clicks, prev, merged = [], None, None
        x = encode_prompt(image, clicks, prev)
        first = clicks[0] if clicks else None
        weight = (~void).astype(np.float32)
        return Example(
            x, target.astype(np.float32), weight, cls, zero_click, image, first, merged is not None
        )

    def click_prompt(
        self, mask: np.ndarray, target: np.ndarray, void: np.ndarray, rng: np.random.Generator
    ) -> tuple[list[Click], np.ndarray | None, np.ndarray | None]:
        """A click example's clicks and previous mask, and the neighbour merged into that
        mask for an over-merge correction (None when there is none)."""
        others = [
            k
            for k, n in zip(*np.unique(mask[~target], return_counts=True), strict=True)
            if k not in (0, VOID) and n >= 64
        ]
        merged = None
        if others and rng.random() < OVERMERGE_P:
            merged = mask == others[int(rng.integers(len(others)))]
        # no draw when off, as for object views: the default recipe's stream stays
        interior = self.interior_click_p > 0 and rng.random() < self.interior_click_p
        clicks, prev = simulate_clicks(target, void, rng, merged, interior)
        return clicks, prev, merged
