"""Export parity: PyTorch vs ONNX fp32 vs int8 on real validation images."""

import shutil

import numpy as np
import pytest
import torch

from squeezesam.models.clicks import encode_prompt, first_click, iou
from squeezesam.models.export import export_checkpoint
from squeezesam.models.predictor import Predictor
from squeezesam.models.train import load_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, checkpoint, data_root):
    out = tmp_path_factory.mktemp("export")
    # a private copy: a training run in the background may rewrite the checkpoint
    snapshot = out / "snapshot_fp16.pt"
    shutil.copy(checkpoint, snapshot)
    fp32, int8, version = export_checkpoint(snapshot, out, data_root, calibration_count=8)
    return fp32, int8, version, snapshot


def test_export_writes_both_files_with_version(exported):
    fp32, int8, version, _ = exported
    assert int8.stat().st_size < fp32.stat().st_size / 2
    assert int8.stat().st_size <= 10e6  # size budget: int8 <= 10 MB
    assert Predictor(int8, threads=1).version == version


def test_torch_fp32_int8_parity(exported, val_samples):
    fp32, int8, _, snapshot = exported
    model, _, _ = load_checkpoint(snapshot)
    model.eval()
    p32, p8 = Predictor(fp32, threads=1), Predictor(int8, threads=1)
    gaps32, gaps8 = [], []
    for sample in val_samples:
        image, mask = sample.load_image(), sample.load_mask()
        prep = p32.prepare(image)
        h, w = prep.valid_size
        gt = mask == sample.objects[0].index
        click = prep.to_working(first_click(gt))
        with torch.no_grad():
            ref = model(torch.from_numpy(encode_prompt(prep.pixels, [click], None))[None])[0]
        ref = ref[0, 0].numpy()[:h, :w] > 0
        m32 = p32.run_network(prep.pixels, [click], None)[0][:h, :w] > 0
        m8 = p8.run_network(prep.pixels, [click], None)[0][:h, :w] > 0
        gaps32.append(iou(m32, ref))
        gaps8.append(iou(m8, m32))
    print(f"mask IoU torch-vs-fp32 {np.mean(gaps32):.4f}, fp32-vs-int8 {np.mean(gaps8):.4f}")
    assert np.mean(gaps32) > 0.99
    assert np.mean(gaps8) > 0.90
