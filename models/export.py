"""Export: checkpoint -> ONNX fp32 -> int8 (static QDQ, calibrated on real images).

Static QDQ quantisation (per-channel S8 weights, U8 activations) was chosen over
dynamic quantisation, which DESIGN.md measured about 10x slower on this CPU.
Calibration inputs come from *training* images (never validation) and include
clicks and previous masks, so the click channels get realistic ranges.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

from squeezesam.models.augment import Loaded
from squeezesam.models.click_simulation import perturb_mask
from squeezesam.models.clicks import encode_prompt, first_click
from squeezesam.models.data import default_data_root, load_samples
from squeezesam.models.network import SqueezeSAM
from squeezesam.models.predictor import DEFAULT_WORKING_SIZE, WEIGHTS_DIR, letterbox, letterbox_mask
from squeezesam.models.train import CHECKPOINT, load_checkpoint

log = logging.getLogger("squeezesam.export")
FP32_NAME = "squeezesam_fp32.onnx"
INT8_NAME = "squeezesam_int8.onnx"


def export_onnx(model: SqueezeSAM, path: Path, metadata: dict[str, str]) -> None:
    """fp32 ONNX with dynamic height/width (multiples of 32)."""
    model.eval()
    x = torch.zeros(1, 6, 512, 384)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["mask", "iou", "cls"],
        dynamic_axes={"input": {2: "height", 3: "width"}, "mask": {2: "height", 3: "width"}},
        opset_version=17,
        dynamo=False,  # the TorchScript exporter gives a plain graph that quantises cleanly
    )
    set_metadata(path, metadata)


def set_metadata(path: Path, metadata: dict[str, str]) -> None:
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(path))


def calibration_inputs(data_root: Path, count: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Network inputs from training images: zero-click, one click, and click + previous mask."""
    rng = np.random.default_rng(seed)
    samples = load_samples(data_root, "train")
    picks = rng.choice(len(samples), size=min(count, len(samples)), replace=False)
    inputs = []
    for n, i in enumerate(picks):
        loaded = Loaded.from_sample(samples[int(i)])
        prep = letterbox(loaded.image, DEFAULT_WORKING_SIZE)
        mask = letterbox_mask(loaded.mask, prep)
        keys = [k for k in loaded.labels if (mask == k).any()]
        if n % 3 == 0 or not keys:
            inputs.append(encode_prompt(prep.pixels, [], None)[None])
            continue
        gt = mask == keys[int(rng.integers(len(keys)))]
        click = first_click(gt)
        prev = perturb_mask(gt, rng) if n % 3 == 2 else None
        inputs.append(encode_prompt(prep.pixels, [click] if click else [], prev)[None])
    return inputs


class _Reader(CalibrationDataReader):
    def __init__(self, inputs: list[np.ndarray]) -> None:
        self.it = iter([{"input": x} for x in inputs])

    def get_next(self):  # noqa: ANN201 (onnxruntime's interface)
        return next(self.it, None)


def quantize(
    fp32_path: Path, int8_path: Path, inputs: list[np.ndarray], metadata: dict[str, str]
) -> None:
    quantize_static(
        str(fp32_path),
        str(int8_path),
        _Reader(inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    set_metadata(int8_path, metadata)


def model_version(
    checkpoint: Path, step: int, meta: dict | None = None, encoder: str = "lite0"
) -> str:
    """squeezesam-base-s<step>-<digest>; `soup` instead of `base` for an average of
    checkpoints (models/soup.py), <step> then the latest ingredient's; `-refine` added
    once a RefineHead was trained on it; `-lite1` for a Lite1 `encoder` (the loaded
    network's, which its weights decide: models/deepen.py)."""
    digest = hashlib.sha1(checkpoint.read_bytes()).hexdigest()[:8]
    kind = "soup" if (meta or {}).get("soup") else "base"
    if (meta or {}).get("refine_head"):  # the stride-2 RefineHead (models/network.py)
        kind += "-refine"
    if encoder != "lite0":
        kind += f"-{encoder}"
    return f"squeezesam-{kind}-s{step}-{digest}"


def export_checkpoint(
    checkpoint: Path = CHECKPOINT,
    out_dir: Path = WEIGHTS_DIR,
    data_root: Path | None = None,
    version: str | None = None,
    calibration_count: int = 24,
) -> tuple[Path, Path, str]:
    model, step, meta = load_checkpoint(checkpoint)
    version = version or model_version(checkpoint, step, meta, model.encoder.variant)
    metadata = {
        "model_version": version,
        "working_size": str(DEFAULT_WORKING_SIZE),
        "classes": "person,pet,other",
        "input": "RGB (x-127)/128, positive clicks, negative clicks, previous mask",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out_dir / FP32_NAME, out_dir / INT8_NAME
    export_onnx(model, fp32, metadata)
    quantize(
        fp32,
        int8,
        calibration_inputs(data_root or default_data_root(), calibration_count),
        metadata,
    )
    log.info(
        "exported %s: %s (%.1f MB), %s (%.1f MB)",
        version,
        fp32,
        fp32.stat().st_size / 1e6,
        int8,
        int8.stat().st_size / 1e6,
    )
    return fp32, int8, version


def main_args(args) -> None:  # called by the CLI
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fp32, int8, version = export_checkpoint(
        Path(args.checkpoint),
        Path(args.out_dir) if args.out_dir else WEIGHTS_DIR,
        Path(args.data) if args.data else None,
        args.version,
    )
    print(version)
    for path in (fp32, int8):
        print(f"{path} {path.stat().st_size / 1e6:.1f} MB")
