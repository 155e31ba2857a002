"""Image-bootstrap intervals and the paired comparison of two runs."""

import numpy as np
import pytest

from squeezesam.models.stats import bootstrap_ci, paired_difference


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    few = rng.integers(1, 21, 20).astype(float)
    low, high = bootstrap_ci(list(few), list(range(20)))
    assert low < few.mean() < high
    many = np.tile(few, 10)  # the same spread over 10x as many images
    low2, high2 = bootstrap_ci(list(many), list(range(200)))
    assert high2 - low2 < (high - low) / 2
    assert bootstrap_ci(list(few), list(range(20))) == (low, high)  # seeded


def test_bootstrap_draws_images_not_objects():
    # one image with 10 failed objects, ten images with one easy object each: resampled
    # as images the failing photo comes in or out whole, so the interval is wide
    values = [20.0] * 10 + [1.0] * 10
    by_image = [0] * 10 + list(range(1, 11))
    by_object = list(range(20))
    low_i, high_i = bootstrap_ci(values, by_image)
    low_o, high_o = bootstrap_ci(values, by_object)
    assert high_i - low_i > high_o - low_o


def test_paired_difference_sees_a_consistent_gain_that_separate_intervals_hide():
    rng = np.random.default_rng(1)
    base = list(rng.integers(1, 21, 60).astype(float))  # hard and easy objects mixed
    other = [b - 1 if i % 3 else b for i, b in enumerate(base)]  # 2 of 3 objects: 1 click less
    images = [i // 2 for i in range(60)]
    base_ci, other_ci = bootstrap_ci(base, images), bootstrap_ci(other, images)
    assert other_ci[1] > base_ci[0]  # apart, the two intervals overlap...
    paired = paired_difference(base, other, images)
    assert paired["verdict"] == "better"  # ...paired, the gain is clear
    assert paired["diff_ci95"][1] < 0 and paired["objects_better"] == 40
    assert paired_difference(other, base, images)["verdict"] == "worse"


def test_paired_difference_of_noise_has_no_verdict():
    rng = np.random.default_rng(2)
    base = list(rng.normal(5, 2, 80))
    other = [b + d for b, d in zip(base, rng.normal(0, 1, 80), strict=True)]
    assert paired_difference(base, other, list(range(80)))["verdict"] == "no clear difference"


def test_higher_is_better_for_iou():
    base, other = [0.5] * 30, [0.6] * 30
    out = paired_difference(base, other, list(range(30)), lower_is_better=False)
    assert out["verdict"] == "better" and out["objects_better"] == 30


def test_paired_difference_needs_the_same_objects():
    with pytest.raises(ValueError, match="same objects"):
        paired_difference([1.0, 2.0], [1.0], [0, 1])
