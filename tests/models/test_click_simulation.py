"""models/click_simulation.py: synthetic previous masks, over-merge corrections and
multi-point starts put each click where its kind says."""

import numpy as np

from squeezesam.models.click_simulation import (
    MAX_START_POINTS,
    multi_point_start,
    perturb_mask,
    simulate_clicks,
)

from .test_augment import coded


def test_perturbed_mask_is_a_probability_map():
    gt = np.zeros((64, 64), bool)
    gt[10:50, 10:50] = True
    p = perturb_mask(gt, np.random.default_rng(3))
    assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1


def test_over_merged_previous_mask_gets_a_negative_click_on_the_other_object():
    image, mask = coded()
    target, other = mask == 1, mask == 2
    rng = np.random.default_rng(4)
    for _ in range(10):
        clicks, prev = simulate_clicks(target, np.zeros_like(target), rng, merged=other)
        assert clicks[0].positive and target[int(clicks[0].y), int(clicks[0].x)]
        # the other object is the largest error of the merged mask: the next click says no
        assert not clicks[1].positive and other[int(clicks[1].y), int(clicks[1].x)]
        if prev is not None:
            assert prev[other].mean() > 0.5


def test_multi_point_start_puts_positives_inside_and_negatives_outside():
    _, mask = coded()
    target, other = mask == 1, mask == 2
    void = np.zeros_like(target)
    void[:, :8] = True  # a void strip: no click may land there
    rng = np.random.default_rng(6)
    counts, on_other = [], 0
    for _ in range(200):
        clicks = multi_point_start(target, void, other, rng)
        assert 2 <= len(clicks) <= MAX_START_POINTS
        assert clicks[0].positive and target[int(clicks[0].y), int(clicks[0].x)]
        for c in clicks:
            y, x = int(c.y), int(c.x)
            assert not void[y, x]
            assert target[y, x] == c.positive
            on_other += (not c.positive) and other[y, x]
        counts.append(len(clicks))
    assert on_other > 0  # "not that one" clicks on the other object
    assert max(counts) > 8 and np.median(counts) <= 5  # a long tail, mostly short


def test_multi_point_start_is_empty_without_a_target():
    _, mask = coded()
    empty = np.zeros_like(mask, bool)
    assert multi_point_start(empty, empty, mask == 2, np.random.default_rng(0)) == []
