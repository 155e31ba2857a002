from __future__ import annotations

import numpy as np
import pytest

from squeezesam.backend.masks import clean_mask, clip_to_box


def test_clean_removes_islands_and_fills_holes():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:90] = True
    mask[40:42, 40:42] = False  # small hole
    mask[95:97, 95:97] = True  # small island
    mask[0:2, 0:2] = True  # small island the annotator clicked on
    cleaned = clean_mask(mask, keep=[(0, 0)])
    assert cleaned[40, 40] and not cleaned[95, 95] and cleaned[0, 0]
    assert cleaned[10:90, 10:90].all()


def test_clean_keeps_big_holes_and_empty_masks():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:90] = True
    mask[30:70, 30:70] = False  # a real hole (a ring)
    assert not clean_mask(mask)[50, 50]
    assert not clean_mask(np.zeros((5, 5), dtype=bool)).any()


def test_clip_to_box():
    mask = np.ones((10, 10), dtype=bool)
    clipped = clip_to_box(mask, (2.0, 3.0, 5.0, 8.0))
    assert clipped.sum() == 3 * 5 and clipped[3:8, 2:5].all()


def test_own_rle_decoder_matches_the_sdks_on_real_masks():
    """decode_brush_rle no longer calls the SDK's decoder (its import costs ~1 s in the
    web process): it must decode exactly the same bytes, index masks and 0/255 ones."""
    from pathlib import Path

    import cv2
    from label_studio_sdk.converter.brush import decode_rle, mask2rle

    from squeezesam.backend.masks import _decode_rle

    data = Path(__file__).resolve().parents[3] / "shared" / "data"
    paths = sorted(data.glob("*/masks/*.png"))[:12]
    if not paths:
        pytest.skip(f"no shared data under {data}")
    noise = (np.random.default_rng(0).random((37, 53)) * 256).astype(np.uint8)  # literal runs
    for mask in [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths] + [noise]:
        for variant in (mask, np.where(mask > 0, 255, 0).astype(np.uint8)):
            rle = [int(v) for v in mask2rle(variant)]
            assert np.array_equal(_decode_rle(rle), decode_rle(rle))
