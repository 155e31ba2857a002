"""Zoom-in (Predictor.zoom_view): the crop holds the object and every click; corrective
clicks see it bigger; the first click and clicks without a previous mask are unchanged."""

import cv2
import numpy as np

from squeezesam.models.clicks import Click, Clicker, iou, object_roi
from squeezesam.models.predictor import ZOOM_EXPANSION, ZOOM_MIN_CROP, Predictor


def test_roi_holds_previous_mask_and_clicks_expanded():
    prev = np.zeros((800, 1200), np.float32)
    prev[200:400, 600:800] = 1.0
    clicks = [Click(300, 700, True), Click(500, 700, False)]
    y0, y1, x0, x1 = object_roi(prev, clicks, (800, 1200), ZOOM_EXPANSION, ZOOM_MIN_CROP)
    assert y0 <= 200 and y1 >= 501 and x0 <= 600 and x1 >= 800
    # expanded by 1.4 around the union box (rows 200..500, columns 600..799)
    assert (y1 - y0) >= 1.39 * 301 and (x1 - x0) >= 1.39 * 200


def test_roi_of_a_tiny_object_is_at_least_min_crop_and_inside_the_image():
    size = 2 * ZOOM_MIN_CROP
    y0, y1, x0, x1 = object_roi(None, [Click(2, 3, True)], (size, size), ZOOM_EXPANSION,
                                ZOOM_MIN_CROP)  # fmt: skip
    assert (y0, x0) == (0, 0)
    assert y1 <= size and x1 <= size
    assert y1 >= ZOOM_MIN_CROP // 2 and x1 >= ZOOM_MIN_CROP // 2


def _object(sample):
    image, mask = sample.load_image(), sample.load_mask()
    return image, mask == sample.objects[0].index, mask == 255


def test_first_click_and_clicks_without_a_previous_mask_are_the_whole_image_pass(
    val_samples, shipped_model
):
    plain = Predictor(shipped_model, threads=1, focus=True)
    zoomed = Predictor(shipped_model, threads=1, focus=True, zoom_in=True)
    image, gt, void = _object(val_samples[0])
    prepared = plain.prepare(image)
    clicker = Clicker(gt, void)
    clicker.make_next(None)
    first = zoomed.predict(prepared, clicker.clicks, None)
    assert np.array_equal(first.probability, plain.predict(prepared, clicker.clicks).probability)
    clicker.make_next(first.mask)
    assert len(clicker.clicks) == 2  # the shipped model leaves an error to click on
    # two clicks but no previous mask (a fresh task in serving): no zoom either
    again = zoomed.predict(prepared, clicker.clicks, None)
    assert np.array_equal(again.probability, plain.predict(prepared, clicker.clicks).probability)


def test_corrective_clicks_are_zoomed_and_stay_inside_the_box(val_samples, shipped_model):
    plain = Predictor(shipped_model, threads=1, focus=True)
    zoomed = Predictor(shipped_model, threads=1, focus=True, zoom_in=True)
    differed = boxed = 0
    for sample in val_samples[:4]:
        image, gt, void = _object(sample)
        prepared = zoomed.prepare(image)
        clicker = Clicker(gt, void)
        pred = prob = None
        for _ in range(3):
            if clicker.make_next(pred) is None:
                break
            p = zoomed.predict(prepared, clicker.clicks, prob)
            if len(clicker.clicks) > 1:
                other = plain.predict(prepared, clicker.clicks, prob)
                differed += not np.array_equal(p.probability, other.probability)
                # nothing outside the box of the previous mask and the clicks
                h, w = prepared.valid_size
                # the previous mask as the predictor lays it on the working image
                working_prev = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
                working_clicks = [prepared.to_working(c) for c in clicker.clicks]
                y0, y1, x0, x1 = object_roi(
                    working_prev, working_clicks, (h, w), ZOOM_EXPANSION, ZOOM_MIN_CROP
                )
                outside = np.ones((h, w), bool)
                outside[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = False
                assert not (p.probability[outside] > 0.5).any()
                boxed += outside.any()
            pred = p.mask
            prob = cv2.resize(p.probability, gt.shape[::-1], interpolation=cv2.INTER_LINEAR)
            assert pred.shape == gt.shape
        # three clicks on a val object of a trained set: a real mask of that object
        assert iou(pred, gt, void) > 0.5
    assert differed > 0  # the zoomed pass is a different pass
    assert boxed > 0  # and some box left part of the image out
