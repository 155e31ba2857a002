"""Zero-click objects: clicks per salient component, and groups found one by one."""

import numpy as np

from squeezesam.models.clicks import iou
from squeezesam.models.objects import component_clicks, find_objects
from squeezesam.models.predictor import CLASS_NAMES, PreparedImage


def test_one_click_for_a_compact_component():
    comp = np.zeros((100, 100), bool)
    comp[40:60, 40:60] = True
    clicks = component_clicks(comp)
    assert len(clicks) == 1 and comp[int(clicks[0].y), int(clicks[0].x)]


def test_several_spread_clicks_for_an_elongated_component():
    comp = np.zeros((100, 200), bool)
    comp[40:60, 10:190] = True
    clicks = component_clicks(comp)
    assert len(clicks) >= 2
    assert all(comp[int(c.y), int(c.x)] for c in clicks)
    xs = sorted(c.x for c in clicks)
    assert xs[-1] - xs[0] > 40


class ScriptedNetwork:
    """Stands in for the network: saliency is the union of `objects`; a click answers
    with the object under it (with a previous mask: that mask, the component's outline);
    `kinds` says which class each object is."""

    def __init__(self, objects: list[np.ndarray], kinds: list[str]) -> None:
        self.objects, self.kinds = objects, kinds
        self.calls: list[tuple[int, bool]] = []  # (clicks, with a previous mask)

    def run_network(self, pixels, clicks, prev):
        self.calls.append((len(clicks), prev is not None))
        if not clicks:
            mask, kind = np.any(self.objects, axis=0), "person"
        elif prev is not None:
            mask, kind = prev > 0, "person"
        else:
            c = clicks[0]
            hit = [i for i, o in enumerate(self.objects) if o[int(c.y), int(c.x)]]
            mask = self.objects[hit[0]] if hit else np.zeros_like(self.objects[0])
            kind = self.kinds[hit[0]] if hit else "other"
        cls = np.array([8.0 if n == kind else 0.0 for n in CLASS_NAMES])
        return np.where(mask, 10.0, -10.0).astype(np.float32), 0.9, cls


def prepared_of(shape: tuple[int, int]) -> PreparedImage:
    return PreparedImage(np.zeros((*shape, 3), np.uint8), shape, 1.0, shape)


def box(shape, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_a_single_subject_is_drawn_by_the_component_pass():
    shape = (64, 96)
    person = box(shape, 10, 50, 20, 60)
    net = ScriptedNetwork([person], ["person"])
    found = find_objects(net, prepared_of(shape))
    assert len(found) == 1 and (found[0].mask == person).all()
    # saliency, the one-click probe, then the component's own pass (with it as prev mask)
    assert net.calls[0] == (0, False) and net.calls[1] == (1, False) and net.calls[2][1]
    assert len(net.calls) == 3


def test_people_side_by_side_are_found_one_by_one():
    """Touching people merge into one salient component; each is found on its own."""
    shape = (64, 128)
    people = [box(shape, 10, 60, 4, 40), box(shape, 12, 60, 40, 80), box(shape, 8, 60, 80, 124)]
    net = ScriptedNetwork(people, ["person", "person", "pet"])
    found = find_objects(net, prepared_of(shape))
    assert len(found) == 3
    for obj in people:
        assert sum(iou(f.mask, obj) > 0.99 for f in found) == 1
    assert {f.label for f in found} == {"person", "pet"}
    assert all(obj.mask[int(c.y), int(c.x)] for obj in found for c in obj.clicks)


def test_the_rest_of_a_group_is_kept_only_where_it_is_a_person_or_pet():
    shape = (64, 128)
    parts = [box(shape, 10, 60, 4, 60), box(shape, 10, 60, 60, 110)]
    net = ScriptedNetwork(parts, ["person", "other"])  # a person beside a sofa
    found = find_objects(net, prepared_of(shape))
    assert len(found) == 1 and iou(found[0].mask, parts[0]) > 0.99


def test_a_photo_larger_than_the_working_size_gets_a_smooth_outline(shipped_model, val_samples):
    """Pre-annotation upsamples each object's probability, as a click's mask is, instead
    of the working mask's pixels: 4x the working size is not drawn in 4x4 blocks."""
    import cv2

    from squeezesam.models.predictor import Predictor

    sample = next(s for s in val_samples if s.set_name.startswith("oxford_pets"))
    small = sample.load_image()
    h, w = small.shape[:2]
    k = 2048 / max(h, w)  # a 2048 px photo: the working image is exactly a quarter of it
    size = (round(w * k) // 4 * 4, round(h * k) // 4 * 4)
    large = cv2.resize(small, size, interpolation=cv2.INTER_CUBIC)
    predictor = Predictor(shipped_model, threads=1)
    prepared = predictor.prepare(large)
    assert prepared.scale == 0.25
    [obj, *_] = find_objects(predictor, prepared)
    assert obj.mask.shape == large.shape[:2]
    h, w = (d // 4 * 4 for d in obj.mask.shape)
    blocks = obj.mask[:h, :w].reshape(h // 4, 4, w // 4, 4).swapaxes(1, 2).reshape(-1, 16)
    # the working grid maps onto aligned 4x4 blocks of the photo: drawn from it, every
    # block would be all object or all background; a smooth edge cuts through them
    mixed = (blocks.any(1) & ~blocks.all(1)).sum()
    grid = (blocks.mean(1) > 0.5).reshape(h // 4, w // 4).astype(np.uint8)
    edge = cv2.morphologyEx(grid, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).sum()
    assert mixed > 0.3 * edge > 0  # most blocks along the outline are cut by it


def test_pre_annotation_is_not_mirrored_when_clicks_are(shipped_model, val_samples):
    """Flip averaging (SQUEEZESAM_FLIP_AVERAGE) doubles the passes of clicks only: the
    workers' pre-annotation finds the same objects, at the same cost, with it on."""
    from squeezesam.models.predictor import Predictor

    class Counting(Predictor):
        mirrored = 0

        def run_network(self, pixels, clicks, prev, valid=None):
            self.mirrored += valid is not None  # flip needs the area to mirror inside
            return super().run_network(pixels, clicks, prev, valid)

    plain = Predictor(shipped_model, threads=1)
    flip = Counting(shipped_model, threads=1, flip=True)
    sample = next(s for s in val_samples if s.set_name.startswith("oxford_pets"))
    prepared = plain.prepare(sample.load_image())
    found, found_flip = find_objects(plain, prepared), find_objects(flip, prepared)
    assert flip.mirrored == 0
    assert len(found) == len(found_flip) > 0
    for a, b in zip(found, found_flip, strict=True):
        assert np.array_equal(a.mask, b.mask) and a.label == b.label
    # while a click through the same predictor is mirrored
    click = found[0].clicks[:1]
    mirrored = flip.predict(prepared, click).probability
    assert flip.mirrored == 1
    assert not np.allclose(mirrored, plain.predict(prepared, click).probability, atol=1e-3)
