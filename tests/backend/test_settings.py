from __future__ import annotations

from pathlib import Path

import pytest

from squeezesam.backend.settings import Settings, settings_table
from squeezesam.models.predictor import DEFAULT_MODEL_PATH

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_point_at_the_shipped_model():
    assert Settings().model_file == DEFAULT_MODEL_PATH


def test_from_env_parses_types():
    settings = Settings.from_env(
        {
            "SQUEEZESAM_MODEL_PATH": "/m.onnx",
            "IMAGE_MAX_PIXELS": "123",
            "INTERACTIVE_TIMEOUT": "2.5",
            "IMAGE_ALLOWED_HOSTS": "A.example, b.example:8080,",
            "LABEL_STUDIO_URL": "http://LS.local:8080/",
        }
    )
    assert settings.model_path == "/m.onnx" and settings.image_max_pixels == 123
    assert settings.interactive_timeout == 2.5
    assert settings.image_allowed_hosts == ("a.example", "b.example:8080")
    assert settings.label_studio_host == "ls.local:8080"
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(ValueError, match="IMAGE_MAX_PIXELS"):
        Settings.from_env({"IMAGE_MAX_PIXELS": "lots"})


def test_readme_settings_table_is_generated_from_the_settings():
    assert settings_table() in README.read_text(), (
        "README.md's settings table is stale: paste `python -m squeezesam.backend.settings`"
    )


def test_the_focus_view_is_on_unless_turned_off():
    assert Settings().focus_view is True
    assert Settings.from_env({"SQUEEZESAM_FOCUS_VIEW": "false"}).focus_view is False
    assert Settings.from_env({"SQUEEZESAM_FOCUS_VIEW": "1"}).focus_view is True


# (setting, its default, its variable, a value turning it from its default, the
# Predictor's attribute). Flip averaging is off by default: on this 2-core machine it takes
# a click's p50 over the 50 ms goal (MODEL_CARD); the others are on.
INFERENCE_OPTIONS = [
    ("focus_view", True, "SQUEEZESAM_FOCUS_VIEW", "false", "focus"),
    ("zoom_in", True, "SQUEEZESAM_ZOOM_IN", "false", "zoom_in"),
    ("guided_filter", True, "SQUEEZESAM_GUIDED_FILTER", "0", "guided"),
    ("flip_average", False, "SQUEEZESAM_FLIP_AVERAGE", "yes", "flip"),
]


@pytest.mark.parametrize(("field", "default", "variable", "turned", "attr"), INFERENCE_OPTIONS)
def test_each_inference_option_has_its_default_and_reaches_the_workers_predictor(
    model_path, field, default, variable, turned, attr
):
    from squeezesam.backend.worker import load_predictor

    assert getattr(Settings(), field) is default
    changed = Settings.from_env({variable: turned})
    assert getattr(changed, field) is (not default)
    assert getattr(load_predictor(model_path, changed), attr) is (not default)
    assert getattr(load_predictor(model_path, Settings()), attr) is default
