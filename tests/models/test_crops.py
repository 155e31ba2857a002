"""Training windows: aligned with their masks; object views as the predictor shows objects."""

import numpy as np

from squeezesam.models.augment import ExampleMaker, Loaded
from squeezesam.models.crops import OBJECT_VIEW_EXPANSION, object_view, scale_and_crop
from tests.models.test_augment import coded


def core_of(inside: np.ndarray) -> np.ndarray:
    """Pixels 2 px inside a mask (nearest-neighbour masks vs. resized pixels differ at edges)."""
    core = inside.copy()
    for shift, axis in ((2, 0), (-2, 0), (2, 1), (-2, 1)):
        core &= np.roll(inside, shift, axis)
    return core


def test_scale_and_crop_keeps_alignment():
    image, mask = coded()
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, m = scale_and_crop(image, mask, mask == 1, 96, rng)
        assert img.shape == (96, 96, 3) and m.shape == (96, 96)
        inside = m == 1
        assert inside.any()
        core = core_of(inside)
        assert (img[core][:, 0] > 200).all() and (img[core][:, 1] < 60).all()


def test_object_view_letterboxes_the_target_box():
    """The target fills the view as zoom-in shows it (its box over the long side between
    1/max and 1/min expansion, allowing for the centre's jitter and the image's edges),
    aligned with its pixels, padding bottom/right background."""
    image, mask = coded()
    rng = np.random.default_rng(0)
    low, high = OBJECT_VIEW_EXPANSION
    for _ in range(20):
        img, m = object_view(image, mask, mask == 1, 96, rng)
        assert img.shape == (96, 96, 3) and m.shape == (96, 96)
        ys, xs = np.nonzero(m == 1)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 96
        assert 1 / high - 0.05 <= extent <= 1 / low + 0.05
        core = core_of(m == 1)
        assert core.any() and (img[core][:, 0] > 200).all() and (img[core][:, 1] < 60).all()
        padding = (img == 0).all(axis=2)
        assert not m[padding].any()
        assert not padding[0, 0]  # the crop starts top-left, as a letterboxed crop does


def test_object_view_of_a_small_object_is_upscaled_at_most_8x():
    """A tiny target gets a box of at least 1/8 of the photo's long side (the focus
    view's bound), so it is never blown up past what serving shows."""
    image, mask = coded()
    mask[:] = 0
    mask[50:56, 70:76] = 1  # 6 x 6 px in a 120 x 160 photo
    rng = np.random.default_rng(1)
    for _ in range(20):
        _, m = object_view(image, mask, mask == 1, 96, rng)
        ys, xs = np.nonzero(m == 1)
        assert ys.size and max(np.ptp(ys), np.ptp(xs)) + 1 <= 6 * 96 / (160 / 8) + 1


def test_object_views_only_for_click_examples():
    """With object views on, click examples show their target at zoom-in scale; zero-click
    examples keep the photo-scale window (the target fills less of it)."""
    image, mask = coded()
    loaded = [Loaded(image, mask, {1: "person", 2: "pet"}, {1: 0.19, 2: 0.065})]
    rng = np.random.default_rng(3)
    clicks = ExampleMaker(loaded, 96, zero_click_p=0.0, object_view_p=1.0)
    zero = ExampleMaker(loaded, 96, zero_click_p=1.0, object_view_p=1.0, max_scale=1.0)
    for maker, zero_click in ((clicks, False), (zero, True)):
        for _ in range(10):
            ex = maker.make(0, rng)
            if ex is None:
                continue
            assert ex.zero_click == zero_click
            if zero_click:  # the photo at long side 96: the red object's 60 px become 36
                red = (ex.image.argmax(2) == 0) & (ex.image.max(2) > 60)  # colour-jittered
                ys, xs = np.nonzero(red)
                assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 38
            else:  # one object, its box at least 1/1.8 of the window (within jitter)
                ys, xs = np.nonzero(ex.target)
                assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 96 / OBJECT_VIEW_EXPANSION[1] - 6
