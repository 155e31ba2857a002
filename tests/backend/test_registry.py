"""The model registry: register, promote, roll back, list; broken models refused; ACTIVE
replaced atomically."""

from __future__ import annotations

import json
import os
import threading

import pytest

from squeezesam.backend import registry as registry_module
from squeezesam.backend.registry import Registry, RegistryError


@pytest.fixture()
def registry(tmp_path, model_path) -> Registry:
    return Registry(tmp_path / "registry", default_model=model_path)


def test_empty_registry_serves_the_shipped_model(registry, model_path):
    assert registry.list() == [] and registry.active() is None
    assert registry.active_path() == model_path
    assert registry.watch_token() == "default"


def test_register_promote_list_and_rollback(registry, model_path, tmp_path):
    card = {"metrics": {"val_iou": 0.91}, "data_size": 120, "parent_version": None}
    path = registry.register(model_path, "ft-001", card)
    assert path == registry.root / "ft-001" / "model.onnx" and path.read_bytes()
    assert registry.active() is None  # registering does not activate
    registry.register(model_path, "ft-002", {"parent_version": "ft-001"})

    registry.promote("ft-001")
    registry.promote("ft-002")
    assert registry.active() == "ft-002"
    assert registry.active_path() == registry.root / "ft-002" / "model.onnx"
    listed = registry.list()
    assert [(m.version, m.active) for m in listed] == [("ft-001", False), ("ft-002", True)]
    assert listed[0].card["metrics"] == {"val_iou": 0.91} and listed[0].card["created"]

    assert registry.rollback() == "ft-001"
    assert registry.active() == "ft-001"
    assert registry.rollback() is None  # back to the shipped model
    assert registry.active_path() == model_path
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    actions = [e["action"] for e in registry.history()["log"]]
    assert actions == ["promote", "promote", "rollback", "rollback"]


def test_registering_an_existing_version_or_a_bad_name_is_refused(registry, model_path):
    registry.register(model_path, "v1", {})
    with pytest.raises(RegistryError, match="already exists"):
        registry.register(model_path, "v1", {})
    with pytest.raises(RegistryError, match="bad version name"):
        registry.register(model_path, "../escape", {})


def test_promoting_a_broken_onnx_file_is_refused(registry, tmp_path, model_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not really a protobuf model")
    registry.register(model_path, "good", {})
    registry.promote("good")
    registry.register(broken, "broken", {})
    with pytest.raises(RegistryError, match=r"'broken'.*does not load"):
        registry.promote("broken")
    (registry.root / "good" / "model.onnx").unlink()
    with pytest.raises(RegistryError, match="is missing"):
        registry.promote("good")
    assert registry.active() == "good"  # nothing changed


def test_watch_token_changes_on_every_promotion(registry, model_path):
    registry.register(model_path, "a", {})
    registry.register(model_path, "b", {})
    seen = {registry.watch_token()}
    for version in ("a", "b", "a"):
        registry.promote(version)
        token = registry.watch_token()
        assert token.startswith(version + "@") and token not in seen
        seen.add(token)


def test_active_is_replaced_atomically_never_half_written(registry, model_path, monkeypatch):
    """ACTIVE is only ever written through a temp file + os.replace; a reader polling while
    promotions run always sees a whole version name."""
    names = ["version-with-a-long-name-0001", "v2"]
    for name in names:
        registry.register(model_path, name, {})
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(registry_module.os, "replace", spy)
    monkeypatch.setattr(registry, "validate", lambda version: None)  # speed: no ORT load
    seen: set[str | None] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.add(registry.active())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(100):
            registry.promote(names[i % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= {None, *names}
    assert ("ACTIVE" in {dst for _, dst in replaced}) and all(
        src.startswith(".ACTIVE.") for src, dst in replaced if dst == "ACTIVE"
    )
    assert not [p for p in registry.root.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((registry.root / "history.json").read_text())["stack"][-1] == names[0]


def run_cli(*argv: str) -> int:
    import argparse

    parser = argparse.ArgumentParser()
    registry_module.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_models_cli_lists_promotes_and_rolls_back(tmp_path, model_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZESAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SQUEEZESAM_MODEL_PATH", str(model_path))
    assert run_cli("models", "register", str(model_path), "v1") == 0
    assert run_cli("models", "promote", "v1") == 0
    assert run_cli("models", "list") == 0
    assert "* v1" in capsys.readouterr().out
    assert run_cli("models", "promote", "nope") == 1
    assert "'nope'" in capsys.readouterr().err
    assert run_cli("models", "rollback") == 0
    assert "the shipped model" in capsys.readouterr().out
    assert Registry(tmp_path / "registry").active() is None


def test_models_list_on_a_fresh_install_names_the_shipped_version(
    tmp_path, model_path, monkeypatch, capsys
):
    """No version registered: the list still says which version is served (the shipped
    model's, marked active), not only "no registered versions"."""
    monkeypatch.setenv("SQUEEZESAM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SQUEEZESAM_MODEL_PATH", str(model_path))
    assert run_cli("models", "list") == 0
    out = capsys.readouterr().out.splitlines()
    shipped = registry_module.model_version_of(model_path)
    assert out[0] == f"* {shipped}  shipped  {model_path}"
    assert "no fine-tuned versions" in out[1]
    # a registered but inactive version: the shipped one stays the one marked active
    assert run_cli("models", "register", str(model_path), "v1") == 0
    capsys.readouterr()
    assert run_cli("models", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"* {shipped}") and lines[1].startswith("  v1")
