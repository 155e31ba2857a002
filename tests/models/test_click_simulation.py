"""models/click_simulation.py: synthetic previous masks and over-merge corrections put
each click where its kind says."""

import numpy as np

from squeezesam.models.augment import ExampleMaker, Loaded
from squeezesam.models.click_simulation import perturb_mask, simulate_clicks
from squeezesam.models.clicks import first_click

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


def test_interior_first_click_is_the_evaluation_protocols():
    """--interior-click-p: the first click is where evaluation puts it; without it, the
    first click wanders over the object (parts included)."""
    image, mask = coded()
    loaded = [Loaded(image, mask, {1: "person", 2: "pet"}, {1: 0.19, 2: 0.065})]
    rng = np.random.default_rng(5)
    interior = ExampleMaker(loaded, 96, zero_click_p=0.0, interior_click_p=1.0)
    anywhere = ExampleMaker(loaded, 96, zero_click_p=0.0)
    for maker, protocol in ((interior, True), (anywhere, False)):
        at_protocol = []
        for _ in range(12):
            ex = maker.make(0, rng)
            if ex is None:
                continue
            expected = first_click(ex.target > 0.5)
            assert ex.first.positive and ex.target[int(ex.first.y), int(ex.first.x)] > 0.5
            at_protocol.append((ex.first.y, ex.first.x) == (expected.y, expected.x))
        assert at_protocol
        assert all(at_protocol) if protocol else not any(at_protocol)
