"""Fine-tuning from the current weights and the promotion gate, on real images."""

import shutil

import pytest

from squeezesam.models.data import discover_sets, load_set, write_set
from squeezesam.models.finetune import GateDecision, finetune, gate, guard_samples


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_root):
    """A stand-in customer project: 6 train + 2 val images of one people/pet set."""
    folder = next(
        f
        for f in discover_sets(data_root)
        if any(o.label in ("person", "pet") for s in load_set(f)[:5] for o in s.objects)
    )
    samples = load_set(folder)
    train = [s for s in samples if s.split == "train"][:6]
    val = [s for s in samples if s.split == "val"][:2]
    return write_set(train + val, tmp_path_factory.mktemp("project") / "project_1")


def test_finetune_writes_a_loadable_candidate_and_the_gate_decides(
    project, checkpoint, shipped_model, tmp_path, data_root
):
    snapshot = tmp_path / "base_fp16.pt"
    shutil.copy(checkpoint, snapshot)
    seen = []
    result = finetune(
        project,
        snapshot,
        tmp_path / "cand",
        steps=2,
        batch=2,
        size=128,
        calibration_count=2,
        on_step=lambda step, losses: seen.append(step),
    )
    assert seen == [1, 2] and result.train_images == 6
    assert result.int8.is_file() and result.version.startswith("squeezesam-")
    heldout = [s for s in load_set(project) if s.split == "val"]
    guard = guard_samples(data_root, per_set=1)
    assert guard and all(any(o.label in ("person", "pet") for o in s.objects) for s in guard)
    decision = gate(result.int8, shipped_model, heldout, guard[:2], max_clicks=3)
    assert isinstance(decision, GateDecision)
    assert set(decision.candidate) == {"heldout", "guard"}
    assert decision.reason
    paired = decision.candidate["heldout"]["noc90_paired"]
    n_objects = decision.candidate["heldout"]["objects"]
    assert paired["objects_better"] + paired["objects_worse"] <= n_objects


def test_gate_refuses_without_heldout_labels(shipped_model):
    decision = gate(shipped_model, shipped_model, [], [])
    assert not decision.promote and "no held-out" in decision.reason


def test_gate_does_not_promote_an_identical_model(shipped_model, project):
    heldout = [s for s in load_set(project) if s.split == "val"]
    decision = gate(shipped_model, shipped_model, heldout, [], max_clicks=3)
    assert not decision.promote  # equal is not better
    # the record says how sure the held-out split is: the same model moves no object
    paired = decision.candidate["heldout"]["noc90_paired"]
    assert paired["diff"] == 0 and paired["verdict"] == "no clear difference"
