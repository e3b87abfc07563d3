"""`faseg export onnx --precision int8`: QDQ structure, metadata, accuracy against fp32, CLI errors, verify, serving."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="int8 export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="int8 export needs onnxruntime: pip install onnxruntime")
pytest.importorskip("skimage", reason="faseg verify needs scikit-image for its sample photos")

import onnx
from faseg.export import custom_ops
from faseg.export.metadata import META_CALIBRATION, META_PRECISION
from faseg.export.onnx_export import ExportError, ExportOptions, export_checkpoint
from faseg.export.quantize import (
    FLOAT_GROUPS,
    QUANTIZED_OPS,
    Calibration,
    QuantizationError,
    calibration_images,
    fold_weight_identities,
    quantizable_nodes,
    read_shapes_before_dequantize,
)
from faseg.export.session import OrtSession, SessionConfig
from faseg.export.verify import TOLERANCES, default_checkpoint, verify
from faseg.service import Settings, create_app
from faseg.service.backends.base import BackendError
from faseg.service.backends.onnxruntime import OnnxRuntimeBackend
from fastapi.testclient import TestClient
from onnx import numpy_helper

from faseg.cli import main

CALIBRATION = Calibration("synthetic:train", num_images=4)
#: Ops that compute in float whatever is quantised: they never read a DequantizeLinear output.
FLOAT_OPS = ("GridSample", "Softmax", "LayerNormalization", "InstanceNormalization", "TopK", "ReduceSum", "Sigmoid")


def _plugin_available(flavour: str) -> None:
    if flavour == "plugin" and custom_ops.ort_custom_ops_library() is None:
        reason = custom_ops.missing_library_message()
        if os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1":
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module", params=["portable", "plugin"])
def int8_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The demo model (faseg_tiny, 256×256, trained weights) exported in int8, with the logits outputs."""
    flavour = request.param
    _plugin_available(flavour)
    out = tmp_path_factory.mktemp(f"int8_{flavour}") / "demo_int8.onnx"
    options = ExportOptions(
        flavour=flavour, precision="int8", calibration=CALIBRATION, outputs="labels,confidence,logits"
    )
    return flavour, export_checkpoint(default_checkpoint(), out, options)


@pytest.mark.timeout(900)  # includes the module fixture: export + calibration, ~2 min per flavour on 2 shared cores
def test_int8_graph_quantises_convs_and_matmuls_and_keeps_the_rest_float(int8_export) -> None:
    flavour, result = int8_export
    model = onnx.load(result.path)
    dq_outputs = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}

    def reads_int8(node) -> bool:
        return any(name in dq_outputs for name in node.input)

    quantised = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS and reads_int8(n)]
    kinds = {n.op_type for n in quantised}
    assert {"Conv", "MatMul"} <= kinds
    step = next(s for s in result.steps if s.step == "int8")
    assert len(quantised) == step.details["quantized_nodes"] >= 20
    # weights are stored as int8 (per output channel) behind DequantizeLinear
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= sum(n.op_type == "Conv" for n in quantised)
    # DequantizeLinear outputs feed the quantised nodes and, for a quantised node's requantised output or a shared
    # input, the cheap ops next to them (Add, Relu, Reshape, ...); the sensitive float ops never read one
    readers = {n.op_type for n in model.graph.node if reads_int8(n)}
    assert readers >= {"Conv", "MatMul"} and not readers & set(FLOAT_OPS)
    # custom-domain nodes keep their fp32 contract: no int8 tensor reaches them (a quantised projection in front of
    # one hands it its dequantised, float output, exactly as it hands it to GridSample in the portable flavour)
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in (n for n in model.graph.node if n.domain == custom_ops.DOMAIN):
        assert all(producers[name].op_type != "QuantizeLinear" for name in node.input if name in producers)
    # the held groups are held: the step's report and the node names agree with FLOAT_GROUPS
    assert set(step.details["float_by_group"]) <= set(FLOAT_GROUPS)
    assert not set(step.details["quantized_by_group"]) & set(FLOAT_GROUPS)
    held = {"input stem": "/backbone/stem/", "backbone early stages": "/backbone/res2/"}
    late = [n for n in model.graph.node if "/backbone/res5/" in n.name and n.op_type == "Conv"]
    assert late and all(reads_int8(n) for n in late)
    for group, scope in held.items():
        convs = [n for n in model.graph.node if scope in n.name and n.op_type == "Conv"]
        assert convs and not any(reads_int8(n) for n in convs) and group in FLOAT_GROUPS
    if flavour == "plugin":
        assert any(n.domain == custom_ops.DOMAIN for n in model.graph.node)
    # speed (benchmarks/profile_ort.py): no Shape keeps a DequantizeLinear alive, and the quantised MatMuls hand out
    # float (ONNX Runtime's MatMulIntegerToFloat), not a requantised output that is dequantised again
    assert not [n.name for n in model.graph.node if n.op_type == "Shape" and reads_int8(n)]
    requantised = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert not [n.name for n in quantised if n.op_type == "MatMul" and n.output[0] in requantised]


def test_int8_metadata_records_precision_and_calibration(int8_export) -> None:
    _, result = int8_export
    assert result.precision == "int8" and result.metadata[META_PRECISION] == "int8"
    assert json.loads(result.metadata[META_CALIBRATION]) == {
        "data": "synthetic:train",
        "num_images": 4,
        "method": "minmax",
    }


@pytest.mark.timeout(900)
def test_int8_runs_in_onnxruntime_and_verify_accepts_it(int8_export) -> None:
    """verify (torch fp32 reference, photos + random images) with the int8 tolerances, at batch 1 and 4."""
    _, result = int8_export
    session = OrtSession(result.path, SessionConfig(device="cpu"))
    assert session.precision == "int8"
    for batch_size in (1, 4):
        report = verify(result.path, batch_size=batch_size, tensorrt="off")
        ort = report["onnxruntime"]
        assert report["precision"] == "int8" and report["passed"], ort
        assert report["tolerances"] == {
            "label_agreement": TOLERANCES["int8"].label_agreement,
            "logits_max_abs": None,
            "confidence_max_abs": None,
            "logits_median_abs": TOLERANCES["int8"].logits_median_abs,
        }
        assert ort["label_agreement"] >= TOLERANCES["int8"].label_agreement
        assert ort["logits_max_abs"] > 1e-3  # int8 moved the logits: the graph really is quantised


def test_verify_rejects_a_corrupted_int8_file(int8_export, tmp_path: Path) -> None:
    """Scramble the int8 weights of the largest quantised tensor: verify's int8 gates catch it (exit 1)."""
    _, result = int8_export
    model = onnx.load(result.path)
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    biggest = max(weights, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(biggest)
    scrambled = np.random.default_rng(0).permutation(values.ravel()).reshape(values.shape)
    biggest.CopyFrom(numpy_helper.from_array(scrambled.astype(np.int8), biggest.name))
    broken = tmp_path / "broken_int8.onnx"
    onnx.save(model, broken)
    report = verify(broken, batch_size=2, tensorrt="off")
    assert report["passed"] is False and report["onnxruntime"]["status"] == "failed"
    assert report["onnxruntime"]["failures"]


@pytest.mark.only_flavour("portable")
def test_service_reports_int8(int8_export) -> None:
    flavour, result = int8_export
    assert flavour == "portable"  # only_flavour deselects the other flavour
    backend = OnnxRuntimeBackend.load(result.path, model_name="demo-int8", max_batch_size=2)
    assert backend.precision == "int8"
    with TestClient(create_app(Settings(max_batch_size=2, warmup=False), backend=backend)) as client:
        models = client.get("/v1/models")
        assert models.status_code == 200, models.text
        assert '"precision":"int8"' in models.text.replace(" ", "")


@pytest.mark.only_flavour("plugin")
def test_int8_plugin_file_with_a_missing_or_wrong_library_fails_at_startup(
    int8_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flavour, result = int8_export
    assert flavour == "plugin"  # only_flavour deselects the other flavour
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(tmp_path / "missing" / custom_ops.LIBRARY_NAME))
    # The service's backend turns the runtime's error into its one-line start-up error (BackendError).
    with pytest.raises(BackendError, match="does not exist"):
        OnnxRuntimeBackend.load(result.path, model_name="demo-int8")
    not_a_library = tmp_path / "libwrong.so"
    not_a_library.write_text("not a shared object")
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(not_a_library))
    with pytest.raises(BackendError, match="not a loadable FASeg"):
        OnnxRuntimeBackend.load(result.path, model_name="demo-int8")
    with pytest.raises(custom_ops.CustomOpsLibraryLoadError):
        OrtSession(result.path, SessionConfig(device="cpu"))


# ---------------------------------------------------------------------------------------------------
# bad input, without exporting
# ---------------------------------------------------------------------------------------------------


def _export_cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["export", "onnx", "--checkpoint", str(default_checkpoint()), "--out", str(tmp_path / "x.onnx"), *extra]


def test_cli_int8_without_calibration_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_export_cli(tmp_path, "--precision", "int8")) == 2
    err = capsys.readouterr().err
    assert "--precision int8 needs calibration images: --calibration DATA" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("spec", ["folder:{empty}", "synthetic:val?num_images=0", "folder:{missing}"])
def test_cli_int8_with_a_dataset_without_images_is_a_clear_error(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "classes.json").write_text(json.dumps({"classes": ["a", "b"]}))
    spec = spec.format(empty=empty, missing=tmp_path / "missing")
    assert main(_export_cli(tmp_path, "--precision", "int8", "--calibration", spec)) == 2
    err = capsys.readouterr().err
    assert f"calibration data {spec!r} yields no images" in err
    assert not (tmp_path / "x.onnx").exists()


def test_cli_calibration_without_int8_and_bad_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(_export_cli(tmp_path, "--calibration", "synthetic:val")) == 2
    assert "--calibration is only used with --precision int8" in capsys.readouterr().err
    argv = _export_cli(tmp_path, "--precision", "int8", "--calibration", "synthetic:val", "--calibration-images", "0")
    assert main(argv) == 2
    assert "--calibration-images must be ≥ 1" in capsys.readouterr().err


def test_export_options_need_calibration_for_int8() -> None:
    with pytest.raises(ExportError, match="precision int8 needs calibration images"):
        ExportOptions(precision="int8")
    with pytest.raises(ExportError, match="only used with precision int8"):
        ExportOptions(precision="fp32", calibration=CALIBRATION)
    with pytest.raises(QuantizationError, match="unknown calibration method"):
        Calibration("synthetic:val", method="entropy")


def test_calibration_images_are_letterboxed_and_spread_over_the_dataset() -> None:
    images = calibration_images("synthetic:val?num_images=10&size=64x96", (64, 64), 3)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    assert (images[:, 43:] == 0).all()  # 64x96 scaled to 43x64, top-left on black
    assert len({image.tobytes() for image in images}) == 3
    assert len(calibration_images("synthetic:val?num_images=2", (32, 32), 16)) == 2  # capped by the dataset


def test_shared_weights_are_folded_so_they_quantise_as_weights() -> None:
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("Identity", ["w"], ["w_shared"], name="share"),
        helper.make_node("MatMul", ["x", "w"], ["a"], name="/predictor/layer.0/MatMul"),
        helper.make_node("MatMul", ["a", "w_shared"], ["b"], name="/predictor/layer.1/MatMul"),
        helper.make_node("MatMul", ["a", "b"], ["c0"], name="/predictor/self_attn/MatMul_3"),
        # masked cross-attention: the query projection (100 queries) and the value projection (every memory token)
        helper.make_node(
            "MatMul", ["c0", "w"], ["c1"], name="/predictor/transformer_cross_attention_layers.3/multihead_attn/MatMul"
        ),
        helper.make_node(
            "MatMul", ["c1", "w"], ["c"], name="/predictor/transformer_cross_attention_layers.3/multihead_attn/MatMul_2"
        ),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [c], initializer=[weight]))
    assert fold_weight_identities(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul"] * 5
    assert quantizable_nodes(model) == {
        "/predictor/layer.0/MatMul": "decoder linear",
        "/predictor/layer.1/MatMul": "decoder linear",
        "/predictor/self_attn/MatMul_3": "decoder attention products",
        "/predictor/transformer_cross_attention_layers.3/multihead_attn/MatMul": "decoder linear",
        "/predictor/transformer_cross_attention_layers.3/multihead_attn/MatMul_2": "decoder memory projections",
    }


def test_shapes_read_the_quantised_tensor_not_its_dequantised_copy() -> None:
    from onnx import TensorProto, helper

    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq"),
        helper.make_node("Relu", ["xdq"], ["y"], name="relu"),
        helper.make_node("Shape", ["xdq"], ["shape"], name="shape_of_dq"),
        helper.make_node("Shape", ["y"], ["shape_y"], name="shape_of_y"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(name, TensorProto.INT64, [2]) for name in ("shape", "shape_y")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs, initializer=[scale, zero]))
    assert read_shapes_before_dequantize(model) == 1
    assert [n.input[0] for n in model.graph.node if n.op_type == "Shape"] == ["xq", "y"]
    onnx.checker.check_model(model)
