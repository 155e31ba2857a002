"""The evaluation CLI on a tiny set made from real validation images."""

import json
import subprocess
import sys

import numpy as np
import pytest

from squeezesam.models.data import discover_sets, load_set, write_set
from squeezesam.models.evaluate import by_area, crowd_matches, noc, unfinished

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


def test_nocs_split_by_object_size_at_32_and_96_pixels_square():
    nocs = [1, 20, 20, 3, 5]
    curves = [[0.95], [0.5] * 20, [0.5] * 19 + [0.92], [0.8, 0.85, 0.92], [0.9]]
    pixels = [100, 1023, 1024, 9215, 9216]
    out = by_area(nocs, curves, pixels, 20)
    assert out["small"] == {"objects": 2, "noc90": 10.5, "failures90": 1}
    # 20 clicks but 0.90 reached on the last one: not a failure
    assert out["medium"] == {"objects": 2, "noc90": 11.5, "failures90": 0}
    assert out["large"] == {"objects": 1, "noc90": 5.0, "failures90": 0}
    assert by_area([], [], [], 20) == {}


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
    assert sum(b["objects"] for b in out["noc90_by_area"].values()) == out["objects"]
    if (tiny_set / "parts").is_dir() and any((tiny_set / "parts").iterdir()):
        assert 0 <= out["part_click_miou"] <= 1
    assert 0 <= out["clicks_honoured"] <= 1
    assert len(out["unfinished90"]) == out["failures90"]


def test_unfinished_lists_the_objects_never_at_090_worst_first():
    curves = [[0.5, 0.89], [0.95], [0.3, 0.2], [0.5] * 19 + [0.92]]
    rows = unfinished(["a/1", "a/2", "b/1", "c/3"], curves, [100, 200, 300, 400])
    assert rows == [
        {"object": "b/1", "pixels": 300, "best_iou": 0.3},
        {"object": "a/1", "pixels": 100, "best_iou": 0.89},
    ]


def test_a_click_the_segmenter_ignores_counts_as_not_honoured(tiny_set):
    """A segmenter that answers every click with an empty mask honours none of them (every
    click is then positive, on the object left out) and finishes no object."""
    from squeezesam.models.evaluate import Results, evaluate_sample

    class Deaf:
        name = "deaf"

        def prepare(self, image):
            return image.shape[:2]

        def segment(self, state, clicks, prev):
            return np.zeros(state, bool), None, "other"

    res = Results()
    for sample in load_set(tiny_set):
        evaluate_sample(Deaf(), sample, 3, False, res)
    assert len(res.honoured) == 3 * len(res.ious) > 0 and not any(res.honoured)
    assert len(unfinished(res.names, res.ious, res.pixels)) == len(res.ious)


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


def test_compare_runs_a_second_model_on_the_same_objects(tiny_set, shipped_model):
    r = run_eval(
        "--data", str(tiny_set), "--model", str(shipped_model), "--compare", str(shipped_model),
        "--max-clicks", "3", "--threads", "1", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    other = out["compare"]
    assert other["objects"] == out["objects"] and other["noc90"] == out["noc90"]
    paired = other["noc90_paired"]
    # the same deterministic model against itself: no object moves, no verdict
    assert paired["diff"] == 0 and paired["diff_ci95"] == [0, 0]
    assert paired["verdict"] == "no clear difference"
    assert paired["objects_better"] == paired["objects_worse"] == 0


def test_compare_with_a_missing_model_is_a_cli_error(tiny_set, tmp_path):
    r = run_eval("--data", str(tiny_set), "--compare", str(tmp_path / "nope.onnx"))
    assert r.returncode != 0 and "--compare model file" in r.stderr


def test_compare_zoom_in_clicks_the_same_model_zoomed_on_the_same_objects(tiny_set):
    r = run_eval(
        "--data", str(tiny_set), "--compare", "zoom-in", "--max-clicks", "4", "--threads", "1",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    other = out["compare"]
    assert other["model"] == out["model"] + "+zoom"
    assert other["objects"] == out["objects"]
    # the first click is the same whole-image pass with and without zoom-in
    assert other["miou_1click"] == out["miou_1click"]
    assert "diff_ci95" in other["noc90_paired"]


def test_compare_zoom_in_with_zoom_in_is_a_cli_error(tiny_set):
    r = run_eval("--data", str(tiny_set), "--zoom-in", "--compare", "zoom-in")
    assert r.returncode != 0 and "--compare zoom-in" in r.stderr


def test_crowd_matching_uses_each_region_once_and_needs_iou_half():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[5:] = True
    void = np.zeros((10, 10), bool)
    # one region covering both people (IoU 0.5 with each) counts for one of them only
    both = a | b
    assert crowd_matches([both], {1: a, 2: b}, void) == [True, False]
    # two regions, one per person
    assert crowd_matches([b, a], {1: a, 2: b}, void) == [True, True]
    # a region a third of a person's size: not found
    third = np.zeros((10, 10), bool)
    third[:2] = True
    assert crowd_matches([third], {1: a}, void) == [False]


def test_compare_merge_clicks_the_same_model_with_progressive_merge(tiny_set):
    r = run_eval(
        "--data", str(tiny_set), "--compare", "merge2", "--max-clicks", "4", "--threads", "1",
        "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    other = out["compare"]
    assert other["model"] == out["model"] + "+merge2"
    # the merge starts at the second click: the first is the same pass
    assert other["miou_1click"] == out["miou_1click"]
    r = run_eval("--data", str(tiny_set), "--merge-from", "3", "--compare", "merge")
    assert r.returncode != 0 and "--compare mergeN" in r.stderr
    r = run_eval("--data", str(tiny_set), "--merge-from", "1")
    assert r.returncode != 0 and "--merge-from must be 0" in r.stderr
