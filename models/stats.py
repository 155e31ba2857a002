"""Statistics for small validation splits: image-bootstrap intervals, paired comparison.

The val splits hold 5 to 168 images, so a NoC@90 figure moves by tenths of a click with
the draw of images. Objects of one photo are not independent (one hard scene fails all
its objects), so the unit drawn with replacement is the image. Two models clicked
through the same objects are compared *paired*: the interval is on the per-object
difference, which varies far less than either model's figure alone.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000


def bootstrap_ci(
    values: list[float], groups: list[int], resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of the mean of `values`, resampling whole images (`groups`).

    A difference between two checkpoints well inside this interval is no larger than
    another draw of val images could make.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=np.asarray(values, dtype=float))
    counts = np.bincount(inverse)
    picks = np.random.default_rng(seed).integers(0, len(sums), (resamples, len(sums)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_difference(
    base: list[float], other: list[float], groups: list[int], lower_is_better: bool = True
) -> dict:
    """`other` minus `base`, object by object: mean, 95 % image-bootstrap interval, and a
    verdict that is only "better" or "worse" when the interval excludes zero."""
    if len(base) != len(other) or len(base) != len(groups):
        raise ValueError("a paired comparison needs the same objects in both runs")
    diff = [o - b for b, o in zip(base, other, strict=True)]
    low, high = bootstrap_ci(diff, groups)
    if lower_is_better:  # NoC: fewer clicks is better
        better, worse = high < 0, low > 0
    else:
        better, worse = low > 0, high < 0
    verdict = "better" if better else "worse" if worse else "no clear difference"
    sign = -1 if lower_is_better else 1
    return {
        "diff": round(float(np.mean(diff)), 3),
        "diff_ci95": [round(low, 3), round(high, 3)],
        "verdict": verdict,
        "objects_better": int(sum(sign * d > 0 for d in diff)),
        "objects_worse": int(sum(sign * d < 0 for d in diff)),
    }
