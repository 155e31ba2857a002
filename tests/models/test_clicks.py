"""The click encoder and the RITM clicker on hand-made masks."""

import numpy as np

from squeezesam.models.clicks import (
    Click,
    Clicker,
    encode_clicks,
    encode_prompt,
    first_click,
    iou,
    next_click,
    random_click_inside,
)


def square(h=64, w=64, y0=10, y1=40, x0=20, x1=50):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_encoder_shapes_and_channels():
    image = np.full((32, 48, 3), 127, np.uint8)
    x = encode_prompt(image, [Click(5, 6, True), Click(20, 30, False)], None)
    assert x.shape == (6, 32, 48) and x.dtype == np.float32
    assert np.allclose(x[:3], 0.0)  # (127 - 127) / 128
    assert x[3, 5, 6] == 1.0 and x[4, 5, 6] == 0.0
    assert x[4, 20, 30] == 1.0 and x[3, 20, 30] == 0.0
    assert not x[5].any()  # no previous mask at the first click


def test_encoder_is_deterministic_and_ignores_clicks_outside():
    clicks = [Click(3.4, 7.6, True), Click(100, 100, True), Click(-1, 2, False)]
    a = encode_clicks(clicks, 16, 16)
    b = encode_clicks(clicks, 16, 16)
    assert np.array_equal(a, b)
    assert a[0, 3, 8] == 1.0 and a[1].sum() == 0


def test_previous_mask_goes_to_the_last_channel():
    prev = np.zeros((8, 8), np.float32)
    prev[2:4, 2:4] = 0.7
    x = encode_prompt(np.zeros((8, 8, 3), np.uint8), [], prev)
    assert np.array_equal(x[5], prev)


def test_first_click_is_the_most_interior_point():
    gt = square()
    c = first_click(gt)
    assert c.positive
    assert 23 <= c.y <= 26 and 33 <= c.x <= 36  # centre of rows 10..39, cols 20..49


def test_next_click_positive_on_the_largest_miss():
    gt = square()
    pred = gt.copy()
    pred[10:40, 35:50] = False  # right half missed
    c = next_click(pred, gt)
    assert c.positive and gt[int(c.y), int(c.x)] and not pred[int(c.y), int(c.x)]


def test_next_click_negative_on_the_largest_false_positive():
    gt = square()
    pred = gt.copy()
    pred[45:64, 0:30] = True  # a big false region below
    pred[12, 22] = False  # a tiny miss: smaller than the false positive
    c = next_click(pred, gt)
    assert not c.positive and pred[int(c.y), int(c.x)] and not gt[int(c.y), int(c.x)]


def test_no_click_when_prediction_is_perfect_and_void_ignored():
    gt = square()
    assert next_click(gt, gt) is None
    pred = gt.copy()
    pred[0:5, 0:5] = True
    void = np.zeros_like(gt)
    void[0:5, 0:5] = True
    assert next_click(pred, gt, void) is None
    assert iou(pred, gt, void) == 1.0


def test_clicker_sequence_and_random_click_inside():
    gt = square()
    clicker = Clicker(gt)
    assert clicker.make_next(None).positive
    pred = np.zeros_like(gt)
    pred[10:40, 20:30] = True
    clicker.make_next(pred)
    assert len(clicker.clicks) == 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = random_click_inside(gt, rng, min_border=2)
        assert gt[int(c.y), int(c.x)]
