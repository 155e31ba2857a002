"""`squeezesam soup`: weighted averages of checkpoints, and its errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from squeezesam.models.export import model_version
from squeezesam.models.network import build_model
from squeezesam.models.soup import SoupError, average_checkpoints, parse_ingredient
from squeezesam.models.train import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """Two checkpoints of the same network with different weights and steps."""
    out = tmp_path_factory.mktemp("soup")
    paths = []
    for seed, step in ((0, 100), (1, 250)):
        torch.manual_seed(seed)
        model = build_model(pretrained=False)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
        paths.append(out / f"s{step}_fp16.pt")
        save_checkpoint(model, step, paths[-1], {"size": 384})
    return paths


def test_soup_is_the_weighted_mean_of_float_tensors(two_checkpoints):
    a, b = two_checkpoints
    blob = average_checkpoints([(a, 3.0), (b, 1.0)])
    sa = torch.load(a)["state_dict"]
    sb = torch.load(b)["state_dict"]
    checked = 0
    for key, value in blob["state_dict"].items():
        if value.is_floating_point():
            expected = 0.75 * sa[key].float() + 0.25 * sb[key].float()
            torch.testing.assert_close(value.float(), expected, atol=2e-3, rtol=2e-3)
            assert value.dtype == sa[key].dtype
            checked += 1
        else:  # BatchNorm's batch counters: the first ingredient's
            assert torch.equal(value, sa[key])
    assert checked > 100


def test_soup_records_its_ingredients_and_the_latest_step(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    blob = average_checkpoints([(a, 1.0), (b, 1.0)])
    assert blob["step"] == 250
    assert [(p["checkpoint"], p["step"], p["weight"]) for p in blob["meta"]["soup"]] == [
        (a.name, 100, 0.5),
        (b.name, 250, 0.5),
    ]
    out = tmp_path / "soup_fp16.pt"
    torch.save(blob, out)
    model, step, meta = load_checkpoint(out)  # loads as an ordinary checkpoint
    assert step == 250 and meta["size"] == 384
    assert model_version(out, step, meta).startswith("squeezesam-soup-s250-")
    assert model_version(a, 100, {"size": 384}).startswith("squeezesam-base-s100-")


def test_ingredient_weights_parse_and_default_to_one():
    assert parse_ingredient("runs/a_fp16.pt") == (Path("runs/a_fp16.pt"), 1.0)
    assert parse_ingredient("runs/a_fp16.pt:0.35")[1] == 0.35
    with pytest.raises(SoupError, match="must be positive"):
        parse_ingredient("runs/a_fp16.pt:0")
    with pytest.raises(SoupError, match="must be positive"):
        parse_ingredient("runs/a_fp16.pt:-1")


def test_soup_refuses_one_checkpoint_a_missing_file_and_another_network(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    with pytest.raises(SoupError, match="at least two"):
        average_checkpoints([(a, 1.0)])
    with pytest.raises(SoupError, match="not found"):
        average_checkpoints([(a, 1.0), (tmp_path / "missing.pt", 1.0)])
    other = torch.load(b)
    other["state_dict"] = {k: v for k, v in other["state_dict"].items() if "transformer" not in k}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(SoupError, match="not the same network"):
        average_checkpoints([(a, 1.0), (tmp_path / "other.pt", 1.0)])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(SoupError, match="is not a checkpoint"):
        average_checkpoints([(a, 1.0), (tmp_path / "text.pt", 1.0)])


def test_soup_command_writes_a_checkpoint_or_names_the_problem(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    out = tmp_path / "soup_fp16.pt"
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "soup", "--out", str(out)]
    done = subprocess.run(cmd + [f"{a}:1", f"{b}:1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and "x0.5" in done.stdout
    bad = subprocess.run(cmd + [str(a), str(tmp_path / "nope.pt")], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "squeezesam soup: checkpoint" in bad.stderr and "not found" in bad.stderr
    assert "Traceback" not in bad.stderr
