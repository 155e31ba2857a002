"""Evaluation: the RITM NoC protocol, zero-click objects, labels, part clicks.

`squeezesam eval --data DIR [--model PATH | --baseline grabcut] [--max-clicks 20] [--json]`
(the command line: `models/evaluate_cli.py`; the segmenters: `models/segmenters.py`)

Per object of the chosen split (objects under MIN_OBJECT_PIXELS are skipped): the
clicker (`clicks.Clicker`) places the first click at the object's most interior
point and each next one at the centre of the largest error; the previous mask is
fed back. IoU is measured at the set's stored resolution, void pixels ignored.
NoC@t is the number of clicks to reach IoU t (max_clicks when never reached);
`noc90_ci95` its 95 % interval over resampled images (`stats.bootstrap_ci`);
`clicks_honoured` the share of clicks whose own pixel got the click's label, and
`unfinished90` the objects never at 0.90 (image id / mask value, area, best IoU). With
`--compare MODEL|grabcut|zoom-in` the second segmenter clicks through the same objects and
`compare` holds its figures and the paired differences (`stats.paired_difference`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from squeezesam.models.clicks import Click, Clicker, interior_point, iou
from squeezesam.models.data import Sample, discover_sets, load_set, salient_objects
from squeezesam.models.segmenters import OnnxSegmenter, Segmenter
from squeezesam.models.stats import bootstrap_ci, paired_difference

MIN_OBJECT_PIXELS = 100


@dataclass
class Results:
    ious: list[list[float]] = field(default_factory=list)  # per object, IoU after each click
    image_of: list[int] = field(default_factory=list)  # per object, the index of its image
    labels: list[str] = field(default_factory=list)  # per object, its objects.csv label
    pixels: list[int] = field(default_factory=list)  # per object, its area in image pixels
    names: list[str] = field(default_factory=list)  # per object, "<image id>/<mask value>"
    honoured: list[bool] = field(default_factory=list)  # per click: its pixel got its label
    seconds: list[float] = field(default_factory=list)
    label_hits: list[bool] = field(default_factory=list)
    part_ious: list[float] = field(default_factory=list)
    zero_ious: list[float] = field(default_factory=list)  # per salient GT object
    zero_found: list[bool] = field(default_factory=list)  # per person/pet GT object
    zero_label_hits: list[bool] = field(default_factory=list)
    # crowded scenes: every person/pet of at least CROWD_MIN_PIXELS, salient or not
    crowd_found: list[bool] = field(default_factory=list)
    zero_false: list[int] = field(default_factory=list)  # per image
    images: int = 0


def noc(curve: list[float], threshold: float, max_clicks: int) -> int:
    for i, v in enumerate(curve):
        if v >= threshold:
            return i + 1
    return max_clicks


def object_nocs(curves: list[list[float]], max_clicks: int, threshold: float = 0.90) -> list[int]:
    """NoC@threshold of each object: what the mean, its interval and pairings are built on."""
    return [noc(c, threshold, max_clicks) for c in curves]


def failures90(nocs: list[int], curves: list[list[float]], max_clicks: int) -> int:
    """Objects that never reached 0.90 in `max_clicks`."""
    return sum(n == max_clicks and max(c) < 0.90 for n, c in zip(nocs, curves, strict=True))


def miou_at(curves: list[list[float]], k: int) -> float:
    # A curve stops early once 0.90 is reached and past 3 clicks: carry the last value.
    return float(np.mean([c[min(k, len(c)) - 1] for c in curves])) if curves else 0.0


def evaluate_object(
    seg: Segmenter, state, gt, void, max_clicks: int, res: Results
) -> tuple[list[float], str]:
    clicker = Clicker(gt, void)
    pred, prob, curve, first_label = None, None, [], ""
    for i in range(max_clicks):
        if clicker.make_next(pred) is None:
            curve.append(1.0)
            break
        t = time.perf_counter()
        pred, prob, label = seg.segment(state, clicker.clicks, prob)
        res.seconds.append(time.perf_counter() - t)
        last = clicker.clicks[-1]
        res.honoured.append(bool(pred[int(last.y), int(last.x)]) == last.positive)
        curve.append(iou(pred, gt, void))
        if i == 0:
            first_label = label
        if curve[-1] >= 0.90 and len(curve) >= 3:
            break
    return curve, first_label


# Crowded scenes: a person or pet counts as found when a zero-click region matches it at
# IoU >= 0.5 (one region per object); objects under 32x32 px (COCO's "small") are left out.
CROWD_MIN_PIXELS = 32 * 32


def crowd_matches(found_masks: list[np.ndarray], gts: dict[int, np.ndarray], void) -> list[bool]:
    """Per ground-truth object (largest first), whether an unused region matches it."""
    used: set[int] = set()
    hits = []
    for k in sorted(gts, key=lambda k: -int(gts[k].sum())):
        scores = [(iou(m, gts[k], void), j) for j, m in enumerate(found_masks) if j not in used]
        best, j = max(scores, default=(0.0, -1))
        if best >= 0.5:
            used.add(j)
        hits.append(best >= 0.5)
    return hits


def crowd_figures(
    masks: list[np.ndarray], gts: dict[int, np.ndarray], labels, areas, void: np.ndarray
) -> tuple[list[bool], int]:
    """One image's zero-click regions in a crowded scene: per person/pet of at least
    CROWD_MIN_PIXELS whether a region matches it, and how many regions match no annotated
    object at IoU >= 0.5 (unmatched)."""
    crowd = {
        k: gts[k]
        for k in labels
        if labels[k] in ("person", "pet") and areas[k] * void.size >= CROWD_MIN_PIXELS
    }
    unmatched = sum(
        1 for m in masks if max((iou(m, g, void) for g in gts.values()), default=0) < 0.5
    )
    return crowd_matches(masks, crowd, void), unmatched


def annotated_objects(sample: Sample, mask: np.ndarray) -> tuple[dict[int, str], dict[int, float]]:
    """({index: label}, {index: share of the image}) of the objects evaluated: those of at
    least MIN_OBJECT_PIXELS."""
    counts = np.bincount(mask.ravel(), minlength=256)
    labels = {o.index: o.label for o in sample.objects if counts[o.index] >= MIN_OBJECT_PIXELS}
    return labels, {k: counts[k] / mask.size for k in labels}


def evaluate_zero_click(seg: OnnxSegmenter, state, mask, labels, areas, res: Results) -> None:
    from squeezesam.models.objects import find_objects

    found = find_objects(seg.predictor, state, saliency_size=seg.saliency_size)
    void = mask == 255
    gts = {k: mask == k for k in labels}
    hits, unmatched = crowd_figures([f.mask for f in found], gts, labels, areas, void)
    res.crowd_found += hits
    res.zero_false.append(unmatched)
    salient = salient_objects(labels, areas)
    used: set[int] = set()
    for k in sorted(salient, key=lambda k: -areas[k]):
        scores = [(iou(f.mask, gts[k], void), j) for j, f in enumerate(found) if j not in used]
        best, j = max(scores, default=(0.0, -1))
        res.zero_ious.append(best)
        if best >= 0.5:
            used.add(j)
            if labels[k] in ("person", "pet", "other"):
                res.zero_label_hits.append(found[j].label == labels[k])
        if labels[k] in ("person", "pet"):
            res.zero_found.append(best >= 0.5)


def evaluate_sample(seg, sample: Sample, max_clicks: int, part_clicks: bool, res: Results) -> None:
    image, mask = sample.load_image(), sample.load_mask()
    state = seg.prepare(image)
    void = mask == 255
    labels, areas = annotated_objects(sample, mask)
    res.images += 1
    for k, label in labels.items():
        gt = mask == k
        curve, predicted = evaluate_object(seg, state, gt, void, max_clicks, res)
        res.ious.append(curve)
        res.image_of.append(res.images)
        res.labels.append(label)
        res.pixels.append(int(gt.sum()))
        res.names.append(f"{sample.image_id}/{k}")
        if label in ("person", "pet", "other") and isinstance(seg, OnnxSegmenter):
            res.label_hits.append(predicted == label)
        if part_clicks:
            parts = sample.load_parts(k)
            if parts is not None:
                ids, sizes = np.unique(parts[parts > 0], return_counts=True)
                for j in ids[np.argsort(-sizes)][:3]:
                    point = interior_point(parts == j)
                    if point is not None:
                        pred, _, _ = seg.segment(state, [Click(point[0], point[1], True)], None)
                        res.part_ious.append(iou(pred, gt, void))
    if isinstance(seg, OnnxSegmenter) and labels:
        evaluate_zero_click(seg, state, mask, labels, areas, res)


# COCO's small / medium / large split (32^2 and 96^2 pixels), counted in the pixels of the
# image as evaluated (the shared sets store long side 512). Small objects decide the COCO
# figures: at s20700 none of the 20 under 32^2 px in the COCO val splits reached 0.90 in
# 20 clicks, with the model or with GrabCut.
AREA_BUCKETS = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, None))


def by_area(nocs: list[int], curves: list[list[float]], pixels: list[int], max_clicks: int) -> dict:
    """Objects, NoC@90 and failures@90 per object size."""
    out = {}
    for name, lo, hi in AREA_BUCKETS:
        idx = [i for i, a in enumerate(pixels) if a >= lo and (hi is None or a < hi)]
        if idx:
            n, c = [nocs[i] for i in idx], [curves[i] for i in idx]
            out[name] = {
                "objects": len(idx),
                "noc90": round(float(np.mean(n)), 3),
                "failures90": failures90(n, c, max_clicks),
            }
    return out


def unfinished(names: list[str], curves: list[list[float]], pixels: list[int]) -> list[dict]:
    """The objects whose IoU never reached 0.90, worst first: name, area, best IoU."""
    rows = [
        {"object": n, "pixels": a, "best_iou": round(max(c), 4)}
        for n, c, a in zip(names, curves, pixels, strict=True)
        if c and max(c) < 0.90
    ]
    return sorted(rows, key=lambda r: r["best_iou"])


def summarise(res: Results, max_clicks: int, name: str, data: str, split: str) -> dict:
    curves = res.ious
    nocs90 = object_nocs(curves, max_clicks)
    out = {
        "model": name,
        "data": data,
        "split": split,
        "images": res.images,
        "objects": len(curves),
        "miou_1click": round(miou_at(curves, 1), 4),
        "miou_3click": round(miou_at(curves, 3), 4),
        "noc85": round(float(np.mean([noc(c, 0.85, max_clicks) for c in curves])), 3)
        if curves
        else None,
        "noc90": round(float(np.mean(nocs90)), 3) if curves else None,
        "noc90_ci95": [round(v, 2) for v in bootstrap_ci(nocs90, res.image_of)] if curves else None,
        "failures90": failures90(nocs90, curves, max_clicks),
        "ms_per_click": round(1000 * float(np.mean(res.seconds)), 2) if res.seconds else None,
    }
    out["noc90_by_area"] = by_area(nocs90, curves, res.pixels, max_clicks)
    # Where the clicks go unheard, and which objects to look at: the ones never at 0.90
    # (Berkeley's were mostly thin parts, MODEL_CARD), worst first.
    if res.honoured:
        out["clicks_honoured"] = round(float(np.mean(res.honoured)), 4)
    out["unfinished90"] = unfinished(res.names, curves, res.pixels)
    # the product's objects: people and pets, whatever set they come from
    for label in ("person", "pet"):
        picked = [c for c, lab in zip(curves, res.labels, strict=True) if lab == label]
        if picked:
            out[f"objects_{label}"] = len(picked)
            out[f"miou_1click_{label}"] = round(miou_at(picked, 1), 4)
            out[f"noc90_{label}"] = round(float(np.mean(object_nocs(picked, max_clicks))), 3)
    out["miou_0click"] = round(float(np.mean(res.zero_ious)), 4) if res.zero_ious else None
    if res.zero_found:
        out["recall_0click_people_pets"] = round(float(np.mean(res.zero_found)), 4)
    if res.crowd_found:
        out["people_pets_32px"] = len(res.crowd_found)
        out["recall_0click_people_pets_32px"] = round(float(np.mean(res.crowd_found)), 4)
    if res.zero_false:
        out["false_regions_per_image"] = round(float(np.mean(res.zero_false)), 3)
    if res.zero_label_hits:
        out["label_accuracy_0click"] = round(float(np.mean(res.zero_label_hits)), 4)
    if res.label_hits:
        out["label_accuracy"] = round(float(np.mean(res.label_hits)), 4)
    if res.part_ious:
        out["part_click_miou"] = round(float(np.mean(res.part_ious)), 4)
        out["part_clicks"] = len(res.part_ious)
    return out


def evaluate_samples(
    seg, samples: list[Sample], max_clicks: int = 20, part_clicks: bool = False, desc: str = ""
) -> Results:
    from tqdm import tqdm

    res = Results()
    for sample in tqdm(samples, desc=desc or f"eval {seg.name}", file=sys.stderr, mininterval=5):
        evaluate_sample(seg, sample, max_clicks, part_clicks, res)
    return res


def evaluate(
    seg,
    data: Path,
    split: str = "val",
    max_clicks: int = 20,
    part_clicks: bool = False,
    max_images: int = 0,
    compare: Segmenter | None = None,
) -> dict:
    """Figures of `seg`; with `compare`, also that segmenter on the same objects and the
    paired difference (`compare` minus `seg`) of NoC@90 and 1-click IoU."""
    sets = discover_sets(data)
    if not sets:
        raise ValueError(f"no image set (images/, masks/, objects.csv) under {data}")
    samples = [s for f in sets for s in load_set(f) if split == "all" or s.split == split]
    if max_images:
        samples = samples[:max_images]
    res = evaluate_samples(seg, samples, max_clicks, part_clicks)
    out = summarise(res, max_clicks, seg.name, str(data), split)
    if compare is not None and res.ious:
        other = evaluate_samples(compare, samples, max_clicks, part_clicks)
        figures = summarise(other, max_clicks, compare.name, str(data), split)
        nocs = [object_nocs(r.ious, max_clicks) for r in (res, other)]
        ones = [[c[0] for c in r.ious] for r in (res, other)]
        figures["noc90_paired"] = paired_difference(*nocs, res.image_of)
        figures["miou_1click_paired"] = paired_difference(
            *ones, res.image_of, lower_is_better=False
        )
        out["compare"] = figures
    return out
