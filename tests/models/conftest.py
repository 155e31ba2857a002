"""Fixtures for model tests: real images from the shared data, the shipped weights."""

from pathlib import Path

import pytest

from squeezesam.models.data import default_data_root, discover_sets, load_set
from squeezesam.models.predictor import DEFAULT_MODEL_PATH
from squeezesam.models.train import CHECKPOINT


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = default_data_root()
    if not discover_sets(root):
        pytest.fail(f"no shared image sets under {root} (set SQUEEZESAM_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def val_samples(data_root):
    """A few validation samples from every set (discovered, not named)."""
    out = []
    for folder in discover_sets(data_root):
        out += [s for s in load_set(folder) if s.split == "val"][:1]
    return out


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    assert DEFAULT_MODEL_PATH.is_file(), "the shipped int8 model is missing"
    return DEFAULT_MODEL_PATH


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    assert CHECKPOINT.is_file(), "the fp16 training checkpoint is missing"
    return CHECKPOINT


@pytest.fixture
def tiny_training(tmp_path, val_samples, checkpoint) -> tuple[Path, Path]:
    """(data root, checkpoint) for a few real training steps: the fixture's val images,
    half of them as training images, and a copy of the shipped checkpoint to train on."""
    from squeezesam.models.data import write_set

    split_of = {s.image_id: ("train" if i % 2 else "val") for i, s in enumerate(val_samples)}
    write_set(val_samples, tmp_path / "data" / "tiny", split_of=split_of, link=True)
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    return tmp_path / "data", ckpt
