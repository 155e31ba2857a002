"""The evaluation CLI on a tiny set made from real validation images."""

import json
import subprocess
import sys

import numpy as np
import pytest

from squeezesam.models.data import discover_sets, load_set, write_set
from squeezesam.models.evaluate import bootstrap_ci, noc

KEYS = {
    "images",
    "objects",
    "miou_0click",
    "miou_1click",
    "miou_3click",
    "noc85",
    "noc90",
    "failures90",
    "noc90_ci95",
    "ms_per_click",
}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory, data_root):
    """Two val images of the first set that has parts (else the first set)."""
    sets = discover_sets(data_root)
    folder = next((f for f in sets if (f / "parts").is_dir()), sets[0])
    samples = [s for s in load_set(folder) if s.split == "val"][:2]
    return write_set(samples, tmp_path_factory.mktemp("tiny") / folder.name)


def run_eval(*args):
    cmd = [sys.executable, "-m", "squeezesam.backend.cli", "eval", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_noc_counts_clicks_to_threshold():
    assert noc([0.5, 0.86, 0.91], 0.85, 20) == 2
    assert noc([0.5, 0.86, 0.91], 0.90, 20) == 3
    assert noc([0.5, 0.6], 0.90, 20) == 20


def test_eval_cli_prints_every_figure(tiny_set, shipped_model):
    r = run_eval(
        "--data",
        str(tiny_set),
        "--model",
        str(shipped_model),
        "--max-clicks",
        "5",
        "--part-clicks",
        "--threads",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert KEYS <= set(out)
    assert out["images"] == 2 and out["objects"] >= 2
    assert 0 <= out["miou_1click"] <= 1 and 1 <= out["noc90"] <= 5
    low, high = out["noc90_ci95"]
    assert low <= out["noc90"] <= high
    if (tiny_set / "parts").is_dir() and any((tiny_set / "parts").iterdir()):
        assert 0 <= out["part_click_miou"] <= 1


def test_grabcut_baseline_through_the_same_clicker(tiny_set):
    r = run_eval("--data", str(tiny_set), "--baseline", "grabcut", "--max-clicks", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model"] == "grabcut" and out["objects"] >= 2


def test_eval_on_a_missing_folder_is_a_cli_error(tmp_path):
    r = run_eval("--data", str(tmp_path / "nothing"), "--json")
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = run_eval("--data", str(tmp_path), "--json")
    assert r.returncode != 0 and "no image set" in r.stderr


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    few = rng.integers(1, 21, 20).astype(float)
    low, high = bootstrap_ci(list(few), list(range(20)))
    assert low < few.mean() < high
    many = np.tile(few, 10)  # the same spread over 10x as many images
    low2, high2 = bootstrap_ci(list(many), list(range(200)))
    assert high2 - low2 < (high - low) / 2
    assert bootstrap_ci(list(few), list(range(20))) == (low, high)  # seeded


def test_bootstrap_draws_images_not_objects():
    # one image with 10 failed objects, ten images with one easy object each: resampled
    # as images the failing photo comes in or out whole, so the interval is wide
    values = [20.0] * 10 + [1.0] * 10
    by_image = [0] * 10 + list(range(1, 11))
    by_object = list(range(20))
    low_i, high_i = bootstrap_ci(values, by_image)
    low_o, high_o = bootstrap_ci(values, by_object)
    assert high_i - low_i > high_o - low_o
