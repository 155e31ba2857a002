"""models/deepen.py and train-base's --deepen / --schedule-start: a trained Lite0
network grows into a Lite1 one that predicts exactly as before, its new blocks open in
training, and the grown checkpoint loads, resumes and exports as Lite1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from squeezesam.models.augment import ExampleMaker, Loaded
from squeezesam.models.deepen import block_renumbering, deepen
from squeezesam.models.export import model_version
from squeezesam.models.network import build_model, imagenet_state
from squeezesam.models.train import (
    cosine_lr,
    draw_batch,
    load_checkpoint,
    save_checkpoint,
    train_step,
)

ADDED = [3, 6, 10, 14, 19]  # the last block of Lite1's stages 2-6


@pytest.fixture(scope="module")
def batch(val_samples):
    maker = ExampleMaker([Loaded.from_sample(s) for s in val_samples], 128, zero_click_p=0.3)
    return draw_batch(maker, np.random.default_rng(11), 6)


@pytest.fixture(scope="module")
def shipped(checkpoint):
    return load_checkpoint(checkpoint)[0]


def _inputs(batch) -> torch.Tensor:
    return torch.from_numpy(np.stack([e.input for e in batch]))


def test_lite0_blocks_keep_their_order_and_one_block_is_added_to_five_stages():
    renumber = block_renumbering()
    assert list(renumber) == list(range(16))
    assert sorted(set(range(21)) - set(renumber.values())) == ADDED
    # each Lite0 tap's block is followed by its stage's added block, Lite1's tap
    assert [renumber[i] + 1 for i in (2, 4, 10)] == [3, 6, 14]


@torch.no_grad()
def test_a_grown_network_predicts_exactly_as_the_trained_one(shipped, batch):
    grown = deepen(shipped)
    assert shipped.encoder.variant == "lite0" and len(shipped.encoder._blocks) == 16
    assert grown.encoder.variant == "lite1" and len(grown.encoder._blocks) == 21
    assert grown.encoder.taps == [0, 3, 6, 14, 20]
    x = _inputs(batch)
    for a, b in zip(shipped.eval()(x), grown.eval()(x), strict=True):
        assert torch.equal(a, b)


def test_added_blocks_start_from_imagenet_lite1_with_a_silent_last_batchnorm(shipped):
    grown = deepen(shipped)
    state = imagenet_state("lite1")
    for index in ADDED:
        block = grown.encoder._blocks[index]
        assert torch.equal(
            block._depthwise_conv.weight, state[f"_blocks.{index}._depthwise_conv.weight"]
        )
        assert not block._bn2.weight.any() and not block._bn2.bias.any()
    # the trained blocks moved with their weights
    assert torch.equal(
        grown.encoder._blocks[20]._project_conv.weight,
        shipped.encoder._blocks[15]._project_conv.weight,
    )


def test_training_opens_the_added_blocks(shipped, batch):
    grown = deepen(shipped, imagenet=False)
    opt = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    grown.train()
    train_step(grown, opt, copy.deepcopy(batch), 1e-3)
    for index in ADDED:
        assert grown.encoder._blocks[index]._bn2.weight.abs().sum() > 0, index
    with torch.no_grad():
        x = _inputs(batch)
        assert not torch.equal(shipped.eval()(x)[0], grown.eval()(x)[0])


def test_only_a_lite0_network_grows():
    with pytest.raises(ValueError, match="only a lite0 encoder grows"):
        deepen(build_model(pretrained=False, encoder="lite1"))
    with pytest.raises(ValueError, match="unknown encoder 'lite9'"):
        build_model(pretrained=False, encoder="lite9")


def test_a_grown_checkpoint_loads_as_lite1_and_exports_a_lite1_version(shipped, tmp_path):
    grown = deepen(shipped, imagenet=False)
    save_checkpoint(grown, 9, tmp_path / "g.pt")  # no meta: the weights say Lite1
    loaded, step, meta = load_checkpoint(tmp_path / "g.pt")
    assert step == 9 and loaded.encoder.variant == "lite1"
    assert "-lite1-s9-" in model_version(tmp_path / "g.pt", step, meta, loaded.encoder.variant)
    assert "-lite1-" not in model_version(tmp_path / "g.pt", step, meta)  # a Lite0's name
    blob = torch.load(tmp_path / "g.pt", map_location="cpu")
    blob["state_dict"] = {
        k: v for k, v in blob["state_dict"].items() if not k.startswith("encoder._blocks.20.")
    }
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="20 encoder blocks: no known encoder"):
        load_checkpoint(tmp_path / "bad.pt")


def test_imagenet_lite1_loads_key_for_key_into_the_lite1_encoder():
    model = build_model(pretrained=True, encoder="lite1")  # strict apart from the stem
    state = imagenet_state("lite1")
    assert torch.equal(model.encoder._conv_stem.weight[:, :3], state["_conv_stem.weight"])
    assert not model.encoder._conv_stem.weight[:, 3:].any()


def test_a_warm_restart_starts_the_cosine_at_its_origin():
    assert cosine_lr(1.0, 23500, 24700, start=23400, origin=23400) == pytest.approx(
        0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * 100 / 1300))
    )
    assert cosine_lr(1.0, 24700, 24700, start=23400, origin=23400) == pytest.approx(0.05)
    assert cosine_lr(1.0, 23400, 24700, start=23400, origin=23400) == pytest.approx(0.01)


def test_train_base_deepens_once_and_resumes_a_grown_checkpoint_as_it_is(checkpoint, tiny_training):
    from squeezesam.models.train import TrainConfig, train

    data, ckpt = tiny_training
    start = torch.load(checkpoint, map_location="cpu")["step"]
    for _ in range(2):  # the same command twice: grown the first time, resumed the second
        cfg = TrainConfig(data=data, checkpoint=ckpt, steps=1, batch=2, size=128,
                          val_per_set=1, threads=1, deepen=True, schedule_start=start,
                          total_steps=start + 10)  # fmt: skip
        train(cfg)
    blob = torch.load(ckpt, map_location="cpu")
    assert blob["step"] == start + 2
    assert blob["meta"]["deepened"] == {"at_step": start}
    grown = load_checkpoint(ckpt)[0]
    assert grown.encoder.variant == "lite1"
    if "soup" in torch.load(checkpoint, map_location="cpu")["meta"]:  # the shipped soup
        assert "soup" not in blob["meta"] and blob["meta"]["trained_from_soup"]
    assert "-base-lite1-" in model_version(ckpt, blob["step"], blob["meta"], grown.encoder.variant)
