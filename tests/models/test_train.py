"""models/train.py: RITM rollouts put later clicks on the network's own errors; the
checkpoint round-trips; the schedule warms up after every restart."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from squeezesam.models.augment import ExampleMaker, Loaded
from squeezesam.models.network import build_model
from squeezesam.models.train import (
    CLICK_WEIGHT_RADIUS,
    cosine_lr,
    draw_batch,
    load_checkpoint,
    mask_loss,
    rollout,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def batch(val_samples):
    maker = ExampleMaker([Loaded.from_sample(s) for s in val_samples], 128, zero_click_p=0.3)
    return draw_batch(maker, np.random.default_rng(3), 12)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(pretrained=False).eval()  # untrained: it surely makes errors


def test_rollout_clicks_land_on_the_errors_of_the_mask_fed_back(batch, model):
    examples = copy.deepcopy(batch)
    rolled = rollout(model, examples, np.random.default_rng(0), p=1.0, max_iters=2)
    clicked = [e for e in examples if not e.zero_click]
    assert rolled == len(clicked) > 0
    checked = 0
    for e in clicked:
        prev = e.input[5]
        assert set(np.unique(prev)) <= {0.0, 1.0}  # the network's binary mask, as served
        # the first click stays where the example put it
        assert e.input[3, int(e.first.y), int(e.first.x)] == 1.0
        # every other click disk sits on an error of that previous mask: positive ones
        # on missed object pixels, negative ones on false positives
        target = e.target > 0.5
        pos = e.input[3] > 0
        neg = e.input[4] > 0
        first = np.zeros_like(pos)
        first[int(e.first.y), int(e.first.x)] = True
        if neg.any():
            assert ((prev > 0.5) & ~target)[neg].any()
            checked += 1
        later_pos = pos & ~_disk_around(first, pos)
        if later_pos.any():
            assert (target & (prev < 0.5))[later_pos].any()
            checked += 1
    assert checked > 0  # an untrained network leaves errors to click on


def test_rollout_leaves_zero_click_examples_and_p0_batches_alone(batch, model):
    examples = copy.deepcopy(batch)
    assert rollout(model, examples, np.random.default_rng(0), p=0.0) == 0
    assert all(np.array_equal(a.input, b.input) for a, b in zip(examples, batch, strict=True))
    examples = copy.deepcopy(batch)
    rollout(model, examples, np.random.default_rng(0), p=1.0)
    for a, b in zip(examples, batch, strict=True):
        if a.zero_click:
            assert np.array_equal(a.input, b.input)
    assert not model.training  # the caller's mode is restored (eval here)


def test_click_weight_weighs_up_the_disk_around_a_rollouts_last_click_only(batch, model):
    examples = copy.deepcopy(batch)
    rollout(model, examples, np.random.default_rng(0), p=1.0, max_iters=2, click_weight=2.0)
    weighted = 0
    for a, b in zip(examples, batch, strict=True):
        if a.zero_click or a.keep_clicks:
            assert np.array_equal(a.weight, b.weight)
            continue
        up = a.weight > b.weight
        assert np.array_equal(a.weight[~up], b.weight[~up])  # elsewhere, void included
        assert np.allclose(a.weight[up], 3.0 * b.weight[up])
        if up.any():
            weighted += 1
            ys, xs = np.nonzero(up)  # one disk, at most the radius from its centre
            assert ys.max() - ys.min() <= 2 * CLICK_WEIGHT_RADIUS
            assert xs.max() - xs.min() <= 2 * CLICK_WEIGHT_RADIUS
        assert not (b.weight == 0)[up].any()
    assert weighted > 0
    # without click_weight (the default recipe) the weights stay as the maker drew them
    fresh = copy.deepcopy(batch)
    rollout(model, fresh, np.random.default_rng(0), p=1.0, max_iters=2)
    assert all(np.array_equal(a.weight, b.weight) for a, b in zip(fresh, batch, strict=True))


def test_checkpoint_round_trips_weights_step_and_meta(tmp_path, model):
    path = tmp_path / "w.pt"
    save_checkpoint(model, 123, path, {"note": "x"})
    loaded, step, meta = load_checkpoint(path)
    assert step == 123 and meta == {"note": "x"}
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        if a.is_floating_point():
            assert torch.allclose(a.half().float(), b), k


def test_cosine_schedule_warms_up_after_a_restart_and_ends_at_5_percent():
    assert cosine_lr(1.0, 5000, 10000, start=5000, warmup=100) == pytest.approx(0.01 * 0.525)
    assert cosine_lr(1.0, 10000, 10000, start=0) == pytest.approx(0.05)
    assert cosine_lr(1.0, 49, 10000, start=0) == pytest.approx(0.5, abs=0.01)  # half warm


def _loss_inputs():
    """Two 1x8x8 examples: the first all right but one pixel badly wrong, the second
    uniformly half right; the last row of the first is void."""
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, :4] = 1.0
    logits = torch.where(target > 0.5, 4.0, -4.0)
    logits[0, 0, 2, 2] = -4.0  # one confident error
    logits[1] = 0.0  # p = 0.5 everywhere
    weight = torch.ones_like(target)
    weight[0, 0, 7] = 0.0
    return logits, target, weight


def _dice(logits, target, weight):
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (prob * t).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + t.sum((1, 2, 3)) + 1)).mean()


def test_mask_loss_bce_is_the_mean_over_non_void_pixels_plus_dice():
    logits, target, weight = _loss_inputs()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = (bce * weight).sum() / weight.sum() + _dice(logits, target, weight)
    assert torch.allclose(mask_loss(logits, target, weight), expected)
    logits[0, 0, 7] = -logits[0, 0, 7]  # void pixels turned wrong: no change
    assert torch.allclose(mask_loss(logits, target, weight), expected)


def test_normalised_focal_loss_reweighs_the_cross_entropy_only():
    logits, target, weight = _loss_inputs()
    weight[1] *= 3.0  # weights above 1 (--click-weight) too
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    hard = (target - torch.sigmoid(logits)).abs() ** 2 * weight
    focus = hard * weight.sum((1, 2, 3), keepdim=True) / hard.sum((1, 2, 3), keepdim=True)
    expected = (bce * focus).sum() / weight.sum() + _dice(logits, target, weight)
    assert torch.allclose(mask_loss(logits, target, weight, focal=True), expected)


def test_normalised_focal_loss_moves_the_weight_onto_the_pixels_still_wrong():
    logits, target, weight = _loss_inputs()
    grads = []
    for focal in (True, False):
        x = logits.clone().requires_grad_(True)
        (mask_loss(x, target, weight, focal) - _dice(x, target, weight)).backward()
        grads.append(x.grad.abs())
    g_focal, g_bce = grads
    # the wrong pixel carries the first example's loss; the right ones almost none
    assert g_focal[0, 0, 2, 2] > 10 * g_bce[0, 0, 2, 2]
    assert g_focal[0, 0, 0, 0] < 0.1 * g_bce[0, 0, 0, 0]
    assert g_focal[0, 0, 7].sum() == 0  # void stays out
    # uniformly wrong pixels: the normalisation keeps the plain BCE's scale
    assert torch.allclose(g_focal[1], g_bce[1], rtol=1e-4)


def _disk_around(point: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """The connected component of `channel` holding `point` (the first click's disk)."""
    import cv2

    _, comp = cv2.connectedComponents(channel.astype(np.uint8))
    ys, xs = np.nonzero(point)
    return comp == comp[ys[0], xs[0]] if channel[ys[0], xs[0]] else np.zeros_like(channel)
