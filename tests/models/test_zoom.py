"""Zoom-in: the crop holds the object and every click; later clicks see it bigger."""

import numpy as np

from squeezesam.models.clicks import Click, Clicker, iou, object_roi
from squeezesam.models.predictor import Predictor
from squeezesam.models.zoom import EXPANSION, MIN_CROP, ZoomState, predict_zoomed


def test_roi_holds_previous_mask_and_clicks_expanded():
    prev = np.zeros((400, 600), np.float32)
    prev[100:200, 300:400] = 1.0
    y0, y1, x0, x1 = object_roi(
        prev, [Click(150, 350, True), Click(250, 350, False)], (400, 600), EXPANSION, MIN_CROP
    )
    assert y0 <= 100 and y1 >= 251 and x0 <= 300 and x1 >= 400
    # expanded by 1.4 around the union box (rows 100..250, columns 300..399)
    assert (y1 - y0) >= 1.39 * 151 and (x1 - x0) >= 1.39 * 100


def test_roi_of_a_tiny_object_is_at_least_min_crop_and_inside_the_image():
    y0, y1, x0, x1 = object_roi(None, [Click(2, 3, True)], (300, 300), EXPANSION, MIN_CROP)
    assert (y0, x0) == (0, 0)
    assert y1 <= 300 and x1 <= 300
    assert y1 >= MIN_CROP // 2 and x1 >= MIN_CROP // 2


def test_first_click_is_the_whole_image_pass(val_samples, shipped_model):
    predictor = Predictor(shipped_model, threads=1)
    sample = val_samples[0]
    image, mask = sample.load_image(), sample.load_mask()
    gt = mask == sample.objects[0].index
    clicker = Clicker(gt, mask == 255)
    clicker.make_next(None)
    state = ZoomState(image, predictor.prepare(image))
    zoomed = predict_zoomed(predictor, state, clicker.clicks, None)
    plain = predictor.predict(state.full, clicker.clicks, None)
    assert np.array_equal(zoomed.mask, plain.mask)
    assert zoomed.probability.shape == gt.shape


def test_corrective_click_masks_stay_at_image_size_and_near_the_object(val_samples, shipped_model):
    predictor = Predictor(shipped_model, threads=1)
    for sample in val_samples[:3]:
        image, mask = sample.load_image(), sample.load_mask()
        gt, void = mask == sample.objects[0].index, mask == 255
        state = ZoomState(image, predictor.prepare(image))
        clicker = Clicker(gt, void)
        pred = prob = None
        for _ in range(3):
            if clicker.make_next(pred) is None:
                break
            p = predict_zoomed(predictor, state, clicker.clicks, prob)
            pred, prob = p.mask, p.probability
            assert pred.shape == gt.shape and prob.shape == gt.shape
        # three clicks on a val object of a trained set: a real mask of that object
        assert iou(pred, gt, void) > 0.5
