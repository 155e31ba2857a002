"""Label Studio payloads under arbitrary input: a typed error or a valid result, never a crash.

Covers the parsers (labelstudio.parse_label_config / parse_context / task_image /
task_regions, webhooks.parse_annotation, masks.decode_brush_rle): every generated input
gives a typed PayloadError (a 4xx with a message) or a valid result. The same strategies
drive the routes in test_fuzz_routes.py.

Examples per property: SQUEEZESAM_FUZZ_EXAMPLES (default 300; thousands with e.g.
`SQUEEZESAM_FUZZ_EXAMPLES=5000 pytest tests/backend/test_fuzz_*.py`).
"""

from __future__ import annotations

import math
import os
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import mask2rle

from squeezesam.backend import labelstudio, webhooks
from squeezesam.backend.labelstudio import PayloadError, parse_context, parse_label_config
from squeezesam.backend.masks import MAX_RLE_PIXELS, decode_brush_rle

EXAMPLES = int(os.environ.get("SQUEEZESAM_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- strategies ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
numbers = (
    st.floats(-1e3, 1e3, allow_nan=False)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-500, 500)
    | st.booleans()
    | st.none()
    | st.text(max_size=5)
)


def region_values(kind: str):
    labels = st.lists(st.text(max_size=8) | st.integers(), max_size=2)
    return st.fixed_dictionaries(
        {"x": numbers, "y": numbers},
        optional={"width": numbers, "height": numbers, "rotation": numbers, kind: labels},
    )


regions = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("keypointlabels"), "value": region_values("keypointlabels")},
        optional={"is_positive": json_values, "id": json_values, "original_width": json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("rectanglelabels"), "value": region_values("rectanglelabels")}
    ),
    st.fixed_dictionaries({"type": json_values, "value": json_values}),
    json_values,
)
contexts = st.one_of(
    st.fixed_dictionaries({"result": st.lists(regions, max_size=6)}),
    json_values,
)

# XML-ish label configs: real tags with random names, values and nesting
tags = st.sampled_from(
    ["View", "Image", "BrushLabels", "KeyPointLabels", "RectangleLabels", "Label", "Text",
     "Choices", "Choice", "Header", "PolygonLabels", "Unknown"]
)  # fmt: skip
attr_values = st.sampled_from(["image", "$image", "tag", "kp", "true", "false", "", "$", "$x"])
attr_values = attr_values | st.text(max_size=6)


@st.composite
def label_configs(draw, depth: int = 0) -> str:
    tag = draw(tags)
    attrs = draw(
        st.dictionaries(
            st.sampled_from(["name", "value", "toName", "smart", "zoom", "background"]),
            attr_values,
            max_size=4,
        )
    )
    text = " ".join(f'{k}="{_xml_escape(v)}"' for k, v in attrs.items())
    children = "" if depth >= 2 else "".join(
        draw(st.lists(label_configs(depth=depth + 1), max_size=3))
    )  # fmt: skip
    return f"<{tag} {text}>{children}</{tag}>"


def _xml_escape(value: str) -> str:
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


configs = st.one_of(
    label_configs().map(lambda inner: f"<View>{inner}</View>"),
    st.text(max_size=200),
    json_values,
)


# --- parsers ---------------------------------------------------------------------------------


@FUZZ
@given(configs)
def test_parse_label_config(xml):
    try:
        config = parse_label_config(xml)
    except PayloadError as exc:
        assert exc.status in (400, 422) and str(exc)
        return
    assert config.image_key and config.brush_name and config.image_name


@FUZZ
@given(context=contexts)
def test_parse_context(context, label_config):
    config = parse_label_config(label_config)
    try:
        prompt = parse_context(context, config)
    except PayloadError as exc:
        assert exc.status == 422 and str(exc)
        return
    assert prompt.points or prompt.box is not None
    for x, y, _positive in prompt.points:
        assert 0.0 <= x <= 100.0 and 0.0 <= y <= 100.0
    for height, width in ((1, 1), (512, 338), (3000, 4000)):
        clicks, box = labelstudio.prompt_clicks(prompt, height, width)
        assert clicks
        for c in clicks:
            assert math.isfinite(c.x) and math.isfinite(c.y)
            assert 0.0 <= c.y <= height - 1 + 1e-6 or height == 1
            assert 0.0 <= c.x <= width - 1 + 1e-6 or width == 1


@FUZZ
@given(task_id=json_values, data=json_values)
def test_task_image(task_id, data, label_config):
    config = parse_label_config(label_config)
    for task in ({"id": task_id, "data": data}, data):
        try:
            image = labelstudio.task_image(task, config)
        except PayloadError as exc:
            assert exc.status in (400, 422) and str(exc)
            continue
        assert isinstance(image.ref, str) and image.ref == image.ref.strip() and image.ref


@FUZZ
@given(context=contexts)
def test_the_click_records_come_from_the_same_parse_as_the_prompt(context, label_config):
    """One parse per request: every keypoint of the prompt is one click record, same
    place and sign (a malformed context fails as a whole, so nothing is recorded)."""
    try:
        prompt = parse_context(context, parse_label_config(label_config))
    except PayloadError:
        return
    assert [(r.x, r.y, r.is_positive) for r in prompt.records] == list(prompt.points)
    for record in prompt.records:
        assert math.isfinite(record.x) and math.isfinite(record.y)


@FUZZ
@given(predictions=json_values)
def test_task_regions_never_raise(predictions, label_config):
    config = parse_label_config(label_config)
    if not hasattr(labelstudio, "task_regions"):
        pytest.skip("labelstudio.task_regions not present")
    for task in ({"predictions": predictions}, {"annotations": [{"result": predictions}]}):
        labelstudio.task_regions(task, config)


# --- brush RLE -----------------------------------------------------------------------------


@FUZZ
@given(
    st.lists(st.integers(-(2**40), 2**40), max_size=64) | st.lists(st.integers(0, 255)),
    st.integers(-5, 2**20),
    st.integers(-5, 2**20),
)
def test_rle_arbitrary_ints(rle, width, height):
    try:
        mask = decode_brush_rle(rle, width, height)
    except ValueError as exc:
        assert str(exc)
        return
    assert mask.shape == (height, width) and mask.dtype == np.uint8


@FUZZ
@given(st.binary(min_size=4, max_size=4), st.lists(st.integers(0, 255), max_size=256))
def test_rle_header_claiming_any_length_allocates_nothing(header, tail):
    """The SDK allocates the header's claimed length (up to 4 GB) before reading runs."""
    claimed = int.from_bytes(header, "big")
    width = height = 64
    assume(claimed != width * height * 4)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="RLE holds"):
            decode_brush_rle(list(header) + tail + [0, 0], width, height)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_rle_huge_sizes_are_refused_before_decoding():
    side = int(math.isqrt(MAX_RLE_PIXELS)) + 1
    claimed = list((side * side * 4 % 2**32).to_bytes(4, "big"))
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="above"):
        decode_brush_rle(claimed + [0] * 8, side, side)
    with pytest.raises(ValueError):
        decode_brush_rle([255, 255, 255, 255, 0, 0], 65535, 16384)  # 2^32 - 4 claimed
    assert time.monotonic() - t0 < 0.5


@FUZZ
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1), st.data())
def test_rle_round_trip_and_damage(width, height, seed, data):
    mask = np.random.default_rng(seed).random((height, width)) < 0.3
    rle = [int(v) for v in mask2rle(mask.astype(np.uint8) * 255)]
    assert ((decode_brush_rle(rle, width, height) > 0) == mask).all()
    damaged = list(rle)
    if data.draw(st.booleans()):
        damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
    else:
        i = data.draw(st.integers(0, len(damaged) - 1))
        damaged[i] = data.draw(st.integers(0, 255))
    try:
        out = decode_brush_rle(damaged, width, height)
    except ValueError:
        return
    assert out.shape == (height, width)


brush_regions = st.fixed_dictionaries(
    {
        "type": st.just("brushlabels"),
        "original_width": st.integers(-2, 50) | json_values,
        "original_height": st.integers(-2, 50) | json_values,
        "value": st.fixed_dictionaries(
            {
                "format": st.just("rle") | json_values,
                "rle": st.lists(st.integers(0, 255), max_size=40) | json_values,
            },
            optional={"brushlabels": json_values},
        ),  # fmt: skip
    }
)


@FUZZ
@given(
    st.lists(brush_regions | regions, max_size=4),
    json_values,
    st.fixed_dictionaries({"id": json_values, "data": json_values}),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.5+02:00"]) | json_values,
)
def test_parse_annotation(result, annotation_id, task, updated_at):
    annotation = {"id": annotation_id, "result": result, "updated_at": updated_at,
                  "project": 1}  # fmt: skip
    try:
        record = webhooks.parse_annotation(annotation, task, 1)
    except PayloadError as exc:
        assert exc.status in (400, 422) and str(exc)
        return
    for obj in record.objects:
        assert obj.mask.ndim == 2 and obj.mask.size > 0
