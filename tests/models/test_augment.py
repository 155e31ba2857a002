"""Augmentations keep masks aligned with images; whole-object targets."""

import numpy as np

from squeezesam.models.augment import ExampleMaker, Loaded, paste
from squeezesam.models.data import CLASS_INDEX


def coded(h=120, w=160):
    """An image whose red channel says where object 1 is, blue where object 2 is."""
    mask = np.zeros((h, w), np.uint8)
    mask[20:80, 30:90] = 1
    mask[90:115, 100:150] = 2
    image = np.zeros((h, w, 3), np.uint8)
    image[mask == 1] = (255, 0, 0)
    image[mask == 2] = (0, 0, 255)
    image[mask == 0] = (0, 255, 0)
    return image, mask


def test_paste_hides_what_is_behind_and_avoids_target():
    image, mask = coded()
    donor = Loaded(image.copy(), mask.copy(), {1: "person", 2: "other"}, {1: 0.2, 2: 0.06})
    rng = np.random.default_rng(1)
    target = mask == 1
    # placement is random and may be refused (overlap): a few tries must succeed
    assert any(paste(image, mask, donor, 2, 200, rng, avoid=target) for _ in range(10))
    assert (mask == 200).any()
    assert not ((mask == 200) & target).any()  # outlier never lands on the target
    assert (image[mask == 200][:, 2] > 200).all()  # pasted pixels are the donor's


def test_examples_are_consistent():
    image, mask = coded()
    loaded = [Loaded(image, mask, {1: "person", 2: "pet"}, {1: 0.19, 2: 0.065})] * 3
    maker = ExampleMaker(loaded, 64)
    rng = np.random.default_rng(2)
    for _ in range(30):
        ex = maker.make(0, rng)
        if ex is None:
            continue
        assert ex.input.shape == (6, 64, 64) and ex.target.shape == (64, 64)
        if ex.zero_click:
            assert not ex.input[3:5].any()
        else:
            # the first positive click lies on the target
            ys, xs = np.nonzero(ex.input[3])
            assert ex.target[ys, xs].any()


def test_look_alike_instances_leave_one_target_with_its_own_label():
    image, mask = coded(240, 320)
    pet_image, pet_mask = coded(240, 320)
    pet_image[pet_mask == 1] = (0, 255, 255)  # the other donor's object: cyan
    loaded = [
        Loaded(image, mask, {1: "person"}, {1: 0.05}),
        Loaded(pet_image, pet_mask, {1: "pet"}, {1: 0.05}),
    ]
    maker = ExampleMaker(loaded, 64)
    rng = np.random.default_rng(4)
    switched = kept = 0
    for _ in range(40):
        img, m = image.copy(), mask.copy()
        targets, label, next_index = maker.add_instances(img, m, 0, 1, {1}, 200, rng)
        pasted = list(range(200, next_index))
        assert len(targets) == 1
        (target,) = targets
        if target == 1:
            kept += 1
            assert label == "person"
        else:
            switched += 1
            assert target in pasted
            # the label is the pasted donor's: red pixels are a person copy, cyan a pet
            pixels = img[m == target]
            assert label == ("pet" if (pixels[:, 1] > 200).mean() > 0.5 else "person")
        # look-alikes never cover the original target
        assert (m == 1).sum() == (mask == 1).sum()
    assert switched and kept  # both outcomes occur


def crowd_scene():
    """A photo with one small red person (area 0.01: no donor) and a donor photo whose
    large object is a blue pet: every object a crowd pastes is blue."""
    image, mask = coded(240, 320)
    mask[mask == 2] = 0
    mask[20:80, 30:90] = 0
    mask[100:124, 150:174] = 1
    image[:] = (0, 255, 0)
    image[mask == 1] = (255, 0, 0)
    pet_image, pet_mask = coded(240, 320)
    pet_mask[pet_mask == 2] = 0
    pet_image[pet_mask == 1] = (0, 0, 255)
    return [Loaded(image, mask, {1: "person"}, {1: 0.0075}),
            Loaded(pet_image, pet_mask, {1: "pet"}, {1: 0.047})]  # fmt: skip


def test_a_crowd_pastes_several_small_people_and_pets():
    loaded = crowd_scene()
    maker = ExampleMaker(loaded, 64, crowd_p=1.0)
    rng = np.random.default_rng(5)
    counts = []
    for _ in range(20):
        img, m = loaded[0].image.copy(), loaded[0].mask.copy()
        visible, next_index = maker.add_crowd(img, m, 200, rng)
        counts.append(len(visible))
        for k, label in visible.items():
            assert label == "pet" and 200 <= k < next_index
            ys, xs = np.nonzero(m == k)
            # small: at most CROWD_SCALE's top (0.3) of the long side, 320 px
            assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 0.3 * 320 + 1
    assert max(counts) >= 3


def test_crowd_examples_target_the_crowd():
    """Zero-click: every person/pet in view (the pasted pets and the photo's own small
    person); a click: one pasted pet, labelled pet."""
    loaded = crowd_scene()
    rng = np.random.default_rng(6)
    zero = ExampleMaker(loaded, 96, zero_click_p=1.0, crowd_p=1.0, max_scale=1.0)
    both = 0
    for _ in range(20):
        ex = zero.make(0, rng)
        if ex is None or not ex.zero_click:
            continue
        on = ex.image[ex.target > 0].astype(int)  # colour-jittered: compare channels
        blue, red = (on.argmax(1) == 2).sum(), (on.argmax(1) == 0).sum()
        both += bool(blue and red)
    assert both >= 5  # the person and the crowd are one zero-click target
    click = ExampleMaker(loaded, 96, zero_click_p=0.0, crowd_p=1.0, max_scale=1.0)
    made = 0
    for _ in range(20):
        ex = click.make(0, rng)
        if ex is None:
            continue
        made += 1
        on = ex.image[ex.target > 0].astype(int)
        assert (on.argmax(1) == 2).mean() > 0.6 and ex.cls == CLASS_INDEX["pet"]  # edges blend
    assert made >= 10


def test_zero_click_only_crowds_leave_click_examples_single_subject():
    """With crowd_clicks off, click examples never get a crowd (no blue pet pasted into
    the red-person photo beyond the occasional occluder) while zero-click ones still do."""
    loaded = crowd_scene()
    rng = np.random.default_rng(7)
    click = ExampleMaker(loaded, 96, zero_click_p=0.0, crowd_p=1.0, max_scale=1.0,
                         crowd_clicks=False)  # fmt: skip
    targets_red = 0
    for _ in range(20):
        ex = click.make(0, rng)
        if ex is None:
            continue
        on = ex.image[ex.target > 0].astype(int)
        targets_red += int((on.argmax(1) == 0).mean() > 0.6)
        assert ex.cls == CLASS_INDEX["person"]  # the photo's own person, never a pasted pet
    assert targets_red >= 10
    zero = ExampleMaker(loaded, 96, zero_click_p=1.0, crowd_p=1.0, max_scale=1.0,
                        crowd_clicks=False)  # fmt: skip
    crowds = 0
    for _ in range(20):
        ex = zero.make(0, rng)
        if ex is not None and ex.zero_click:
            crowds += int((ex.image[ex.target > 0].argmax(1) == 2).any())
    assert crowds >= 5


def test_over_merge_examples_keep_their_clicks_through_rollouts():
    image, mask = coded()
    loaded = [Loaded(image, mask, {1: "person", 2: "pet"}, {1: 0.19, 2: 0.065})]
    maker = ExampleMaker(loaded, 96, zero_click_p=0.0)
    rng = np.random.default_rng(5)
    kept = [
        ex for ex in (maker.make(0, rng) for _ in range(60)) if ex is not None and ex.keep_clicks
    ]
    assert kept  # OVERMERGE_P of the examples with another object in the crop
    for ex in kept:
        negative = ex.input[4] > 0
        # a "no" on the object the previous mask wrongly held: off the target (a disk at the
        # edge of a thin crop may graze it)
        assert negative.any() and (negative & (ex.target > 0)).sum() < negative.sum() / 2
