"""The names teams bring from HumanSignal's label-studio-ml examples: the variable aliases
(LABEL_STUDIO_HOST, LABEL_STUDIO_ACCESS_TOKEN, MODEL_DIR, THREADS) and `GET /`."""

from __future__ import annotations

import dataclasses

import pytest

from squeezesam.backend.app import create_app
from squeezesam.backend.settings import ConfigError, Settings, settings_table

ALIASES = {
    "LABEL_STUDIO_HOST": ("label_studio_url", "http://ls.example:8080"),
    "LABEL_STUDIO_ACCESS_TOKEN": ("label_studio_api_key", "0123456789abcdef"),
    "MODEL_DIR": ("data_dir", "/data/models"),
    "THREADS": ("web_threads", 8),
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_official_variable_names_are_aliases(alias):
    name, value = ALIASES[alias]
    assert getattr(Settings.from_env({alias: str(value)}), name) == value


def test_the_canonical_name_wins_when_both_are_set():
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://canonical:8080",
                                  "LABEL_STUDIO_HOST": "http://alias:8080",
                                  "LABEL_STUDIO_API_KEY": "canonical",
                                  "LABEL_STUDIO_ACCESS_TOKEN": "alias"})  # fmt: skip
    assert settings.label_studio_url == "http://canonical:8080"
    assert settings.label_studio_api_key == "canonical"
    # an empty canonical value counts as unset, as it always has
    assert Settings.from_env({"LABEL_STUDIO_URL": "", "LABEL_STUDIO_HOST": "http://a:1"}
                             ).label_studio_url == "http://a:1"  # fmt: skip


def test_a_bad_alias_value_names_the_alias():
    with pytest.raises(ConfigError, match="^THREADS='many': "):
        Settings.from_env({"THREADS": "many"})


def test_settings_table_lists_each_alias():
    table = settings_table()
    for alias in ALIASES:
        assert f"(alias `{alias}`)" in table


def test_root_answers_like_health_with_the_same_auth_rules(settings):
    locked = dataclasses.replace(settings, basic_auth_user="lead", basic_auth_pass="s3cret")
    for app in (create_app(settings), create_app(locked)):
        client = app.test_client()
        root, health = client.get("/"), client.get("/health")
        assert root.status_code == health.status_code == 200  # open, like /health
        assert root.json == health.json == {"status": "UP", "model_class": "SqueezeSAM"}
    assert create_app(locked).test_client().get("/versions").status_code == 401
