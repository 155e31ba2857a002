"""Shared test fixtures: the model file and the shared data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from squeezesam.models.predictor import DEFAULT_MODEL_PATH

REPO = Path(__file__).resolve().parent.parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the PostgreSQL pass selects on it
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test with a PostgreSQL case (a "postgresql" parameter: the backend's `store`
    fixture, `open_store(kind, ...)`) is marked `postgres`, wherever it lives, so
    .ci/postgres_tests.sh selects them all with `-m postgres` and no file list."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if any(isinstance(value, str) and value == "postgresql" for value in params):
            item.add_marker(pytest.mark.postgres)


def shared_data_dir() -> Path:
    return Path(os.environ.get("SQUEEZESAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def build_test_model(path: Path) -> Path:
    """A tiny ONNX model with the real I/O contract. TESTS ONLY: it is not a model.

    input "input" float32 [1,6,H,W] -> "mask" [1,1,H,W] logits (a square grown around
    each positive click, minus a smaller one around each negative click), "iou" [1,1],
    "cls" [1,3] (always "person").
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)

    nodes = [
        helper.make_node("Slice", ["input", "s3", "s4", "ax1"], ["pos"]),
        helper.make_node("Slice", ["input", "s4", "s5", "ax1"], ["neg"]),
        helper.make_node("MaxPool", ["pos"], ["pos_grown"], kernel_shape=[41, 41], pads=[20] * 4),
        helper.make_node("MaxPool", ["neg"], ["neg_grown"], kernel_shape=[21, 21], pads=[10] * 4),
        helper.make_node("Mul", ["pos_grown", "k20"], ["a"]),
        helper.make_node("Mul", ["neg_grown", "k40"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["c"]),
        helper.make_node("Sub", ["c", "k10"], ["mask"]),
        helper.make_node("ReduceMean", ["pos_grown"], ["pm"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Reshape", ["pm", "shape11"], ["pm2"]),
        helper.make_node("Add", ["pm2", "half"], ["iou"]),
        helper.make_node("ReduceMean", ["input"], ["chan"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["chan", "w"], ["cl"]),
        helper.make_node("Add", ["cl", "bias"], ["cls"]),
    ]
    ints = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.int64), name)  # noqa: E731
    inits = [
        ints("s3", [3]), ints("s4", [4]), ints("s5", [5]), ints("ax1", [1]),
        ints("shape11", [1, 1]),
        const("k20", 20.0), const("k40", 40.0), const("k10", 10.0), const("half", 0.5),
        const("w", np.zeros((6, 3))), const("bias", [[2.0, 0.0, 0.0]]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "squeezesam_test",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 6, "H", "W"])],
        [
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "H", "W"]),
            helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1, 3]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"model_version": "test-untrained"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The shipped model if present, else (tests only) the tiny stand-in above."""
    if DEFAULT_MODEL_PATH.is_file():
        return DEFAULT_MODEL_PATH
    return build_test_model(tmp_path_factory.mktemp("model") / "test_model.onnx")


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """Real images from every shared data set (discovered, not hard-coded)."""
    root = shared_data_dir()
    images = sorted(root.glob("*/images/*.jpg"))
    if not images:
        pytest.skip(f"no shared images under {root} (set SQUEEZESAM_SHARED_DATA)")
    by_set: dict[str, list[Path]] = {}
    for image in images:
        by_set.setdefault(image.parent.parent.name, []).append(image)
    # a few from each set, interleaved, so any prefix spans several sets
    picked = [p for group in zip(*[v[:6] for v in by_set.values()], strict=False) for p in group]
    return picked
