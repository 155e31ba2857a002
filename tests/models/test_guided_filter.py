"""models/guided_filter.py: He et al.'s guided filter, acting only near the edge of a
mask large enough, and through the predictor on a click's mask edge only."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from squeezesam.models.guided_filter import (
    MIN_AREA,
    RADIUS,
    guided_filter,
    refine_probability,
)


def _grey(sample) -> np.ndarray:
    return cv2.cvtColor(sample.load_image(), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255


def test_flat_guide_gives_the_box_mean_and_an_edge_guide_keeps_a_step(val_samples):
    p = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    flat = np.full_like(p, 0.5)
    box = cv2.boxFilter(p, -1, (5, 5), borderType=cv2.BORDER_REFLECT)
    twice = cv2.boxFilter(box, -1, (5, 5), borderType=cv2.BORDER_REFLECT)
    # no structure in the guide: a = 0, the output is the mean of the window means
    assert np.allclose(guided_filter(flat, p, 2, 1e-3), twice, atol=1e-5)
    # a guide with the input's own step edge: the filter keeps the step where it is
    step = np.zeros((40, 50), np.float32)
    step[:, 25:] = 1.0
    out = guided_filter(step, step, 2, 1e-3)
    assert ((out > 0.5) == (step > 0.5)).all()


def test_a_certain_or_small_mask_is_returned_unchanged(val_samples):
    image = val_samples[0].load_image()
    prob = np.zeros(image.shape[:2], np.float32)
    prob[40:90, 50:120] = 1.0  # a hard mask: nothing uncertain, nothing to move
    assert refine_probability(image, prob) is prob
    prob[:] = 0
    prob[40:80, 50:100] = 1.0
    small = cv2.GaussianBlur(prob, (0, 0), 1.5)
    assert (small > 0.5).sum() < MIN_AREA
    assert refine_probability(image, small) is small  # the focus view's mask stays


def test_the_filter_acts_only_within_its_reach_of_the_uncertain_band(val_samples):
    image = val_samples[1].load_image()
    h, w = image.shape[:2]
    prob = np.zeros((h, w), np.float32)
    prob[h // 4 : h // 2, w // 4 : w // 2] = 1.0
    prob = cv2.GaussianBlur(prob, (0, 0), 1.5)
    assert (prob > 0.5).sum() >= MIN_AREA
    out = refine_probability(image, prob)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    band = ((prob > 0.01) & (prob < 0.99)).astype(np.uint8)
    reach = cv2.dilate(band, np.ones((4 * RADIUS + 3,) * 2, np.uint8)) > 0
    # beyond the filter's reach of the band the probability moves by less than the band's
    # margin, so no pixel there changes side of 0.5; within it the edge does move
    assert np.abs(out - prob)[~reach].max() <= 0.01
    assert not np.allclose(out[reach], prob[reach])
    ys, xs = np.nonzero(band)  # outside the box of the band (grown) it is untouched
    far = np.ones((h, w), bool)
    grow = 3 * RADIUS
    far[max(0, ys.min() - grow) : ys.max() + grow, max(0, xs.min() - grow) : xs.max() + grow] = 0
    assert np.array_equal(out[far], prob[far])


@pytest.mark.parametrize("guided", [False, True])
def test_predictor_moves_a_clicks_mask_edge_only(shipped_model, val_samples, guided):
    from squeezesam.models.clicks import Click, first_click
    from squeezesam.models.predictor import Predictor

    sample = max(val_samples, key=lambda s: (s.load_mask() == s.objects[0].index).sum())
    image, mask = sample.load_image(), sample.load_mask()
    click = first_click(mask == sample.objects[0].index)
    plain = Predictor(shipped_model, threads=1)
    other = Predictor(shipped_model, threads=1, guided=guided)
    prepared = plain.prepare(image)
    a = plain.predict(prepared, [Click(click.y, click.x, True)])
    b = other.predict(prepared, [Click(click.y, click.x, True)])
    changed = a.mask != b.mask
    if not guided:
        assert not changed.any()
        return
    assert changed.any()
    # every changed pixel lies within a few pixels of the unfiltered mask's edge
    edge = cv2.morphologyEx(a.mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    near = cv2.dilate(edge, np.ones((13, 13), np.uint8)) > 0
    assert not (changed & ~near).any()
