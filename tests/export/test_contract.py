"""The serving contract (faseg.export.contract), the native-library locator and the engine metadata reader:
the pieces every runtime (ONNX Runtime session, TensorRT engine, the service's backends) shares."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faseg.export.contract import (
    ContractError,
    ModelInfo,
    TensorInfo,
    check_serving_io,
    check_size,
    default_palette,
    parse_palette,
)
from faseg.export.native_library import NativeLibrary
from faseg.export.tensorrt_runtime import TensorRTRuntimeError, read_engine_metadata

IMAGES = TensorInfo("uint8", (None, 64, 96, 3))
OUTPUTS = {"labels": TensorInfo("uint8", (None, 64, 96)), "confidence": TensorInfo("float32", (None, 64, 96))}


def test_serving_io_gives_the_fixed_size_or_none() -> None:
    assert check_serving_io({"images": IMAGES}, OUTPUTS) == (64, 96)
    dynamic = TensorInfo("uint8", (None, None, None, 3))
    assert check_serving_io({"images": dynamic}, OUTPUTS) is None


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({"pixels": IMAGES}, OUTPUTS, "expected input 'images' uint8"),
        ({"images": TensorInfo("float32", (None, 64, 96, 3))}, OUTPUTS, "expected input 'images' uint8"),
        ({"images": IMAGES}, {"labels": OUTPUTS["labels"]}, r"missing outputs \['confidence'\]"),
        ({"images": IMAGES}, {**OUTPUTS, "labels": TensorInfo("int64", (None, 64, 96))}, "uint8 or uint16"),
        ({"images": TensorInfo("uint8", (None, 3, 64, 96))}, OUTPUTS, r"\(N, H, W, 3\)"),
    ],
)
def test_serving_io_violations_are_named(inputs: dict, outputs: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        check_serving_io(inputs, outputs)


def test_sizes_and_metadata() -> None:
    assert check_size((512, 640)) == (512, 640)
    with pytest.raises(ContractError, match=r"multiple of 32.*512x640"):
        check_size((500, 630))
    meta = {"faseg.classes": json.dumps(["a", "b", "c"]), "faseg.input_size": "[64, 96]", "faseg.flavour": "plugin"}
    info = ModelInfo.from_metadata("m", meta)
    assert info.input_size == (64, 96) and info.flavour == "plugin" and info.label_dtype == np.uint8
    assert info.palette == default_palette(3)
    assert ModelInfo.from_metadata("m", meta, input_size=(32, 32)).input_size == (32, 32)  # the graph wins
    with pytest.raises(ContractError, match=r"faseg\.classes"):
        ModelInfo.from_metadata("m", {"faseg.input_size": "[64, 96]"})
    with pytest.raises(ContractError, match="fixed input size unknown"):
        ModelInfo.from_metadata("m", {"faseg.classes": '["a"]'})
    with pytest.raises(ContractError, match=r"0\.\.255"):
        parse_palette([[0, 0, 300]], 1, "m")
    assert parse_palette([[1, 2, 3]], 2, "m") == ((1, 2, 3), default_palette(2)[1])  # a short one is completed


def test_native_library_override_is_the_only_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = tmp_path / "build" / "libx.so"
    library = NativeLibrary(name="libx.so", env="FASEG_TEST_LIBX", defaults=(built,), build_command="make x")
    monkeypatch.delenv("FASEG_TEST_LIBX", raising=False)
    assert library.find() is None and "expected at" in library.missing_message()
    built.parent.mkdir()
    built.write_bytes(b"")
    assert library.find() == built.resolve()
    monkeypatch.setenv("FASEG_TEST_LIBX", str(tmp_path / "missing.so"))
    assert library.search_paths() == [tmp_path / "missing.so"] and library.find() is None
    message = library.missing_message()
    assert "FASEG_TEST_LIBX points to" in message and "make x" in message


def test_engine_metadata_from_sidecar_or_onnx(tmp_path: Path, toy_onnx_metadata: Path) -> None:
    engine = tmp_path / "m.plan"
    assert read_engine_metadata(engine) == {}
    engine.with_suffix(".json").write_text(json.dumps({"faseg.classes": ["a"], "faseg.preset": "p"}))
    assert read_engine_metadata(engine) == {"faseg.classes": '["a"]', "faseg.preset": "p"}
    engine.with_suffix(".json").write_text("{not json")
    with pytest.raises(TensorRTRuntimeError, match="is not JSON"):
        read_engine_metadata(engine)
    beside = toy_onnx_metadata.with_suffix(".plan")
    assert read_engine_metadata(beside)["faseg.classes"] == '["a", "b"]'


@pytest.fixture
def toy_onnx_metadata(tmp_path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"faseg.classes": '["a", "b"]'})
    path = tmp_path / "beside" / "m.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path
