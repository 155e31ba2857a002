"""Config parsing (via label-studio-sdk), prompts in percent, results out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from squeezesam.backend.export_labels import label_kind
from squeezesam.backend.labelstudio import (
    PayloadError,
    ProjectConfig,
    Prompt,
    brush_result,
    choose_label,
    object_label,
    parse_context,
    parse_label_config,
    prompt_clicks,
)

from .conftest import keypoint, rectangle

SHIPPED = Path(__file__).resolve().parents[2] / "annotation_configs" / "people_pets.xml"


def test_shipped_config_parses():
    config = parse_label_config(SHIPPED.read_text())
    assert (config.image_name, config.image_key, config.brush_name) == ("image", "image", "tag")
    assert config.brush_labels == ("Person", "Pet")
    assert config.smart_tools == {"kp": "KeyPointLabels", "box": "RectangleLabels"}


@pytest.mark.parametrize(
    "xml, words",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        ('<View><Text name="t" value="$t"/></View>', "no <Image>"),
        ('<View><Image name="i" value="$img"/></View>', "no <BrushLabels>"),
    ],
)
def test_unsupported_configs_name_what_is_missing(xml, words):
    with pytest.raises(PayloadError, match=words):
        parse_label_config(xml)


def test_context_percent_to_pixels(label_config):
    config = parse_label_config(label_config)
    prompt = parse_context(
        {"result": [keypoint(50, 25, 200, 100), keypoint(100, 100, 200, 100, positive=False)]},
        config,
    )
    clicks, box = prompt_clicks(prompt, height=100, width=200)
    assert box is None
    assert (clicks[0].x, clicks[0].y, clicks[0].positive) == (100.0, 25.0, True)
    assert (clicks[1].x, clicks[1].y, clicks[1].positive) == (199.0, 99.0, False)  # edge clamped


def test_rectangle_adds_centre_click_unless_a_positive_click_is_inside(label_config):
    config = parse_label_config(label_config)
    box_only = parse_context({"result": [rectangle(10, 20, 40, 60, 100, 100)]}, config)
    clicks, box = prompt_clicks(box_only, 100, 100)
    assert box == (10.0, 20.0, 50.0, 80.0) and [(c.x, c.y) for c in clicks] == [(30.0, 50.0)]
    both = parse_context(
        {"result": [rectangle(10, 20, 40, 60, 100, 100), keypoint(15, 25, 100, 100)]}, config
    )
    clicks, _ = prompt_clicks(both, 100, 100)
    assert [(c.x, c.y) for c in clicks] == [(15.0, 25.0)]


@pytest.mark.parametrize(
    "regions, words",
    [
        ([], "non-empty"),
        ([{"type": "keypointlabels"}], "value"),
        ([keypoint(101, 5, 10, 10)], "outside the image"),
        ([keypoint("a", 5, 10, 10)], "must be a number"),
        ([rectangle(80, 0, 30, 10, 10, 10)], "outside the image"),
        ([{"type": "choices", "value": {}}], "no keypoint or rectangle"),
    ],
)
def test_bad_contexts(regions, words, label_config):
    with pytest.raises(PayloadError, match=words):
        parse_context({"result": regions}, parse_label_config(label_config))


def test_label_choice(label_config):
    config = parse_label_config(label_config)
    assert choose_label("Pet", "person", config) == "Pet"
    assert choose_label("pet", "person", config) == "Pet"
    assert choose_label(None, "pet", config) == "Pet"
    assert choose_label("Horse", "other", config) == "Person"  # first brush label


@pytest.mark.parametrize("person", ["Person", " person ", "PERSON", "person", "\tPerSon\n"])
def test_one_label_rule_both_ways(person):
    """Case and surrounding spaces never count: a config label spelt any of these ways
    gets the model's `person` objects and prompts (class -> label), and exports as the
    `person` kind (label -> class); so does a prompt label spelt that way."""
    config = ProjectConfig("image", "image", "tag", (person, "Pet"))
    assert object_label("person", {"person": 0.8}, 0.5, config) == (person, 0.4)
    assert object_label("other", {"other": 1.0}, 0.5, config) is None
    assert choose_label(None, "person", config) == person
    assert choose_label(" PERSON ", "pet", config) == person  # the prompt's label wins
    assert choose_label(" pet\t", "person", config) == "Pet"
    assert label_kind(person) == "person" and label_kind(" PET ") == "pet"
    assert label_kind("Personal") == "other"


def test_brush_result_rle_round_trip(label_config):
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:30, 10:41] = True
    result = brush_result(mask, "Person", 0.91234, parse_label_config(label_config))
    assert result["original_width"] == 53 and result["original_height"] == 37
    back = decode_rle(result["value"]["rle"]).reshape(37, 53, 4)[:, :, 3]
    assert np.array_equal(back > 0, mask)
    assert result["score"] == 0.9123 and result["value"]["format"] == "rle"
    assert Prompt((), None, None).points == ()
