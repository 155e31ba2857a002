"""models/network.py RefineHead and train-base's --refine-head/--freeze-base: the head
joins a trained checkpoint without changing its predictions, and training it alone
moves nothing else (weights or BatchNorm statistics)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from squeezesam.models.augment import ExampleMaker, Loaded
from squeezesam.models.train import draw_batch, load_checkpoint, save_checkpoint, train_step


@pytest.fixture(scope="module")
def batch(val_samples):
    maker = ExampleMaker([Loaded.from_sample(s) for s in val_samples], 128, zero_click_p=0.3)
    return draw_batch(maker, np.random.default_rng(5), 6)


def _inputs(batch) -> torch.Tensor:
    return torch.from_numpy(np.stack([e.input for e in batch]))


@torch.no_grad()
def test_a_new_refine_head_leaves_the_shipped_predictions_unchanged(checkpoint, batch):
    plain, _, _ = load_checkpoint(checkpoint)
    refined, _, _ = load_checkpoint(checkpoint, refine=True)
    assert plain.refine is None and refined.refine is not None
    x = _inputs(batch)
    for a, b in zip(plain.eval()(x), refined.eval()(x), strict=True):
        assert torch.equal(a, b)


def test_freeze_base_trains_the_head_alone(checkpoint, batch, tmp_path):
    model, _, _ = load_checkpoint(checkpoint, refine=True)
    before = copy.deepcopy(model.state_dict())
    model.freeze_base = True
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("refine."))
    model.train()
    assert not model.encoder.training and model.refine.training
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_step(model, opt, copy.deepcopy(batch), 1e-2)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("refine.") for k in changed)
    assert "refine.out.weight" in changed  # the zero-initialised residual has moved
    # the trained head round-trips through a checkpoint, found without being asked for
    save_checkpoint(model, 7, tmp_path / "r.pt")
    loaded, step, _ = load_checkpoint(tmp_path / "r.pt")
    assert step == 7 and loaded.refine is not None
    with torch.no_grad():
        x = _inputs(batch)
        diff = (loaded.eval()(x)[0] - model.eval()(x)[0]).abs().max()
    assert diff < 0.05  # fp16 storage only


def test_export_names_a_version_with_a_trained_refine_head(checkpoint, tmp_path):
    from squeezesam.models.export import model_version

    _, step, meta = load_checkpoint(checkpoint)
    assert "-refine-" not in model_version(checkpoint, step, meta)
    meta["refine_head"] = {"added_at_step": step, "frozen_base": True}  # what train() adds
    assert "-refine-s" in model_version(checkpoint, step, meta)


def test_a_checkpoint_missing_other_weights_is_refused(checkpoint, tmp_path):
    blob = torch.load(checkpoint, map_location="cpu")
    blob["state_dict"] = {k: v for k, v in blob["state_dict"].items() if "mask_head" not in k}
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="mask_head"):
        load_checkpoint(tmp_path / "bad.pt", refine=True)


def test_train_base_with_a_frozen_base_moves_only_the_head_and_records_it(
    checkpoint, tiny_training
):
    from squeezesam.models.train import TrainConfig, train

    data, ckpt = tiny_training
    cfg = TrainConfig(data=data, checkpoint=ckpt, steps=2, batch=2, size=128,
                      val_per_set=1, threads=1, refine_head=True, freeze_base=True)  # fmt: skip
    train(cfg)
    before = torch.load(checkpoint, map_location="cpu")
    after = torch.load(ckpt, map_location="cpu")
    assert after["step"] == before["step"] + 2
    assert after["meta"]["refine_head"] == {"added_at_step": before["step"], "frozen_base": True}
    for key, value in before["state_dict"].items():
        assert torch.equal(value, after["state_dict"][key]), key  # BatchNorm statistics too
    assert after["state_dict"]["refine.out.weight"].abs().sum() > 0


def test_freeze_base_without_a_head_is_refused(checkpoint, tmp_path):
    from squeezesam.models.train import TrainConfig, train

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(checkpoint.read_bytes())
    cfg = TrainConfig(data=tmp_path, checkpoint=ckpt, steps=1, freeze_base=True, threads=1)
    with pytest.raises(ValueError, match="--refine-head"):
        train(cfg)
