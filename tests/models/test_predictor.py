"""The ONNX predictor: letterboxing, outputs at original size, no torch at serving."""

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from squeezesam.models.clicks import Click, first_click, iou
from squeezesam.models.predictor import Predictor, letterbox, progressive_merge


def test_letterbox_pads_to_stride_and_keeps_scale():
    image = np.zeros((300, 200, 3), np.uint8)
    prep = letterbox(image, 512)
    assert prep.pixels.shape == (512, 352, 3)
    assert prep.valid_size == (512, 341) and prep.original_size == (300, 200)
    assert prep.scale == pytest.approx(512 / 300)


def test_letterbox_rejects_non_rgb():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        letterbox(np.zeros((10, 10), np.uint8))


def test_prediction_at_original_size_and_follows_the_click(shipped_model, val_samples):
    predictor = Predictor(shipped_model, threads=1)
    sample = val_samples[0]
    image, mask = sample.load_image(), sample.load_mask()
    gt = mask == sample.objects[0].index
    out = predictor.predict(predictor.prepare(image), [first_click(gt)])
    assert out.mask.shape == image.shape[:2] and out.mask.dtype == bool
    assert 0.0 <= out.score <= 1.0 and out.label in ("person", "pet", "other")
    assert sum(out.class_probs.values()) == pytest.approx(1.0, abs=1e-4)
    c = first_click(gt)
    assert out.mask[int(c.y), int(c.x)]  # the clicked pixel is in the mask


def test_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Predictor(tmp_path / "nope.onnx")


def test_predictor_runs_with_torch_import_blocked(shipped_model):
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in serving")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from squeezesam.models.predictor import Predictor
        from squeezesam.models.objects import find_objects
        from squeezesam.models.clicks import Click
        p = Predictor({str(shipped_model)!r}, threads=1)
        img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        prep = p.prepare(img)
        out = p.predict(prep, [Click(120, 160, True)])
        find_objects(p, prep)
        assert out.mask.shape == (240, 320)
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_previous_mask_is_accepted_at_original_size(shipped_model):
    predictor = Predictor(shipped_model, threads=1)
    img = np.random.default_rng(1).integers(0, 255, (200, 260, 3), dtype=np.uint8)
    prev = np.zeros((200, 260), bool)
    prev[50:150, 60:200] = True
    out = predictor.predict(predictor.prepare(img), [Click(100, 130, True)], prev)
    assert out.mask.shape == (200, 260)


def test_serving_processes_never_import_torch():
    """The CLI parser (every process builds it), the web app and the workers' jobs."""
    code = (
        "import sys\n"
        "from squeezesam.backend import cli, app, jobs, worker, preannotate_job\n"
        "cli.build_parser()\n"
        "app.create_app()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_flip_averaging_makes_the_prediction_mirror_equivariant(shipped_model, val_samples):
    """With `flip`, the mask of the mirrored photo clicked at the mirrored point is the
    mirror of the photo's mask (each pass is averaged with its mirror), and it differs
    from the single pass only at the edges."""
    sample = val_samples[0]
    image = sample.load_image()
    gt = sample.load_mask() == sample.objects[0].index
    single, flipped = (
        Predictor(shipped_model, threads=1),
        Predictor(shipped_model, threads=1, flip=True),
    )
    click = first_click(gt)
    w = image.shape[1]
    mirrored_click = Click(click.y, w - 1 - click.x, click.positive)
    mask = flipped.predict(flipped.prepare(image), [click]).mask
    mirror_mask = flipped.predict(flipped.prepare(image[:, ::-1].copy()), [mirrored_click]).mask
    agree = (mask & mirror_mask[:, ::-1]).sum() / max((mask | mirror_mask[:, ::-1]).sum(), 1)
    assert agree > 0.995, agree
    one = single.predict(single.prepare(image), [click]).mask
    assert (one & mask).sum() / max((one | mask).sum(), 1) > 0.9


class CountingPasses(Predictor):
    passes = 0

    def run_network(self, *args, **kwargs):
        self.passes += 1
        return super().run_network(*args, **kwargs)


def small_subject(val_samples) -> tuple[np.ndarray, np.ndarray]:
    """A val person/pet shrunk to a fifth and set on a plain grey canvas: (image, mask)."""
    sample = next(s for s in val_samples if s.objects[0].label in ("person", "pet"))
    image, mask = sample.load_image(), sample.load_mask() == sample.objects[0].index
    h, w = image.shape[:2]
    sh, sw = h // 5, w // 5
    canvas = np.full((h, w, 3), 128, np.uint8)
    small_mask = np.zeros((h, w), bool)
    canvas[h // 3 : h // 3 + sh, w // 3 : w // 3 + sw] = cv2.resize(image, (sw, sh))
    small_mask[h // 3 : h // 3 + sh, w // 3 : w // 3 + sw] = cv2.resize(
        mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST
    ).astype(bool)
    return canvas, small_mask


def test_focus_view_predicts_a_small_object_again_on_its_crop(val_samples, shipped_model):
    image, gt = small_subject(val_samples)
    plain = CountingPasses(shipped_model, threads=1)
    focused = CountingPasses(shipped_model, threads=1, focus=True)
    click = first_click(gt)
    a = plain.predict(plain.prepare(image), [click])
    b = focused.predict(focused.prepare(image), [click])
    assert (plain.passes, focused.passes) == (1, 2)
    assert b.mask.shape == gt.shape and iou(b.mask, gt) > 0.6
    # nothing outside the object's neighbourhood: the crop is pasted back, the rest is 0
    ys, xs = np.nonzero(gt)
    far = np.ones_like(gt)
    far[max(0, ys.min() - gt.shape[0] // 4) : ys.max() + gt.shape[0] // 4,
        max(0, xs.min() - gt.shape[1] // 4) : xs.max() + gt.shape[1] // 4] = False  # fmt: skip
    assert not b.mask[far].any()
    assert a.mask.any()


def test_focus_view_leaves_a_large_object_to_the_first_pass(val_samples, shipped_model):
    sample = next(s for s in val_samples if s.objects[0].label in ("person", "pet"))
    image, gt = sample.load_image(), sample.load_mask() == sample.objects[0].index
    plain = CountingPasses(shipped_model, threads=1)
    focused = CountingPasses(shipped_model, threads=1, focus=True)
    click = first_click(gt)
    a = plain.predict(plain.prepare(image), [click])
    b = focused.predict(focused.prepare(image), [click])
    assert focused.passes == 1 and np.array_equal(a.mask, b.mask) and a.score == b.score


def _square(y0: int, y1: int, x0: int, x1: int, size: int = 64) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    out[y0:y1, x0:x1] = 0.9
    return out


def test_progressive_merge_keeps_only_the_change_under_a_positive_click():
    prev = _square(10, 30, 10, 30)
    new = np.maximum(_square(10, 30, 10, 40), _square(50, 60, 50, 60))  # grown + far blob
    new[12:16, 12:16] = 0.1  # and a hole far from the click
    merged = progressive_merge(new, prev, Click(20, 35, True))
    assert (merged > 0.5)[10:30, 30:40].all()  # the growth under the click is taken
    assert not (merged > 0.5)[50:60, 50:60].any()  # the far blob is not
    assert (merged > 0.5)[12:16, 12:16].all()  # nor the far hole
    assert merged.dtype == np.float32


def test_progressive_merge_removes_only_the_part_under_a_negative_click():
    prev = np.maximum(_square(10, 30, 10, 30), _square(40, 50, 40, 60))
    new = _square(10, 20, 10, 30)  # drops the far block and the square's lower half
    merged = progressive_merge(new, prev, Click(45, 50, False))
    assert not (merged > 0.5)[40:50, 40:60].any()
    assert (merged > 0.5)[20:30, 10:30].all()


def test_progressive_merge_takes_the_new_pass_when_it_ignored_the_click():
    prev = _square(10, 30, 10, 30)
    new = _square(12, 28, 12, 28)
    assert progressive_merge(new, prev, Click(50, 50, True)) is new
