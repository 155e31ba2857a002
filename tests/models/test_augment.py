"""Augmentations keep masks aligned with images; whole-object targets."""

import numpy as np

from squeezesam.models.augment import ExampleMaker, Loaded, paste, scale_and_crop


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


def test_scale_and_crop_keeps_alignment():
    image, mask = coded()
    rng = np.random.default_rng(0)
    for _ in range(10):
        img, m = scale_and_crop(image, mask, mask == 1, 96, rng)
        assert img.shape == (96, 96, 3) and m.shape == (96, 96)
        inside = m == 1
        assert inside.any()
        # nearest-neighbour masks vs. area-resized pixels: compare away from edges
        core = (
            inside
            & np.roll(inside, 2, 0)
            & np.roll(inside, -2, 0)
            & np.roll(inside, 2, 1)
            & np.roll(inside, -2, 1)
        )
        assert (img[core][:, 0] > 200).all() and (img[core][:, 1] < 60).all()


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
