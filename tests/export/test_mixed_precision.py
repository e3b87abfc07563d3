"""`faseg export onnx --precision fp16`: the Cast-insertion pass on a hand-made graph, then FASeg exports."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="fp16 export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="fp16 export needs onnxruntime: pip install onnxruntime")
pytest.importorskip("skimage", reason="faseg verify needs scikit-image for its sample photos")

import onnx
import onnxruntime as ort
from faseg.export import custom_ops
from faseg.export.mixed_precision import MixedPrecisionError, convert_to_mixed_precision
from faseg.export.onnx_export import ExportOptions, export_checkpoint
from faseg.export.verify import default_checkpoint, verify
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import save_pretrained
from onnx import TensorProto, helper, numpy_helper

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _types(model) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _toy_graph():
    """uint8 image -> normalise -> Conv -> Resize (fp32 scales) -> +1e5·0 -> threshold -> masked fill; the
    positional term is a Constant (not data); Shape reads the data tensor."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    big = numpy_helper.from_array(np.array([1e5], np.float32), "big")
    zero = numpy_helper.from_array(np.array([0.0], np.float32), "zero")
    ninf = numpy_helper.from_array(np.array([-np.inf], np.float32), "ninf")
    thr = numpy_helper.from_array(np.array([0.25], np.float32), "thr")
    pos = helper.make_tensor("pos_value", FLOAT, [1, 4, 1, 1], [0.5, -0.5, 0.25, 1.0])
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=FLOAT, name="cast_in"),
        helper.make_node("Constant", [], ["pos"], value=pos, name="pos_const"),
        helper.make_node("Div", ["x", "big"], ["xn"], name="normalise"),  # tiny values: fp16 subnormals
        helper.make_node("Mul", ["xn", "big"], ["xs"], name="rescale"),
        helper.make_node("Conv", ["xs", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["c", "pos"], ["cp"], name="add_pos"),
        helper.make_node("Resize", ["cp", "roi", "scales"], ["r"], mode="linear", name="resize"),
        helper.make_node("Mul", ["big", "zero"], ["bz"], name="const_math"),
        helper.make_node("Add", ["r", "bz"], ["y"], name="add_const"),
        helper.make_node("Less", ["y", "thr"], ["below"], name="threshold"),
        helper.make_node("Where", ["below", "ninf", "y"], ["masked"], name="masked_fill"),
        helper.make_node("Shape", ["y"], ["shape"], name="shape"),
        helper.make_node("TopK", ["masked", "k"], ["top", "top_idx"], axis=1, name="topk"),
    ]
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    graph = helper.make_graph(
        nodes,
        "toy",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [2, 3, 8, 8])],
        [
            helper.make_tensor_value_info("masked", FLOAT, None),
            helper.make_tensor_value_info("below", TensorProto.BOOL, None),
            helper.make_tensor_value_info("shape", TensorProto.INT64, None),
            helper.make_tensor_value_info("top", FLOAT, None),
        ],
        initializer=[weight, scales, roi, big, zero, ninf, thr, k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, images: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def test_cast_insertion_on_a_toy_graph() -> None:
    src = _toy_graph()
    mixed, report = convert_to_mixed_precision(src, lambda n: "top-k" if n.op_type == "TopK" else None)
    onnx.checker.check_model(mixed, full_check=True)
    types = _types(mixed)
    nodes = {n.name: n for n in mixed.graph.node}
    # data path in fp16: the input Cast now writes fp16, the conv computes fp16
    assert [a.i for a in nodes["cast_in"].attribute if a.name == "to"] == [FLOAT16]
    assert types[nodes["conv"].output[0]] == FLOAT16 and types[nodes["conv"].input[1]] == FLOAT16
    # Resize's scales keep their schema type; the constant positional term is cast where it meets fp16 data
    assert nodes["resize"].input[2] == "scales" and types["scales"] == FLOAT
    assert types[nodes["add_pos"].input[1]] == FLOAT16 and nodes["add_pos"].input[1] != "pos"
    # constant-only math (no data) is untouched, so 1e5 is not clipped into fp16 there
    assert types["bz"] == FLOAT and nodes["add_const"].input[1] != "bz"
    # the comparison decides on fp32 values, TopK (kept by the rule) computes fp32, Shape reads fp16 as is
    assert types[nodes["threshold"].input[0]] == FLOAT and types[nodes["threshold"].input[1]] == FLOAT
    assert types[nodes["topk"].input[0]] == FLOAT and report.kept_by_rule == {"top-k": 1}
    assert types[nodes["shape"].input[0]] == FLOAT16
    # -inf stays infinite in its fp16 copy; graph outputs keep their types
    ninf16 = next(t for t in mixed.graph.initializer if t.name.startswith("ninf"))
    assert ninf16.data_type == FLOAT16 and np.isneginf(numpy_helper.to_array(ninf16)).all()
    out_types = [[o.type.tensor_type.elem_type for o in m.graph.output] for m in (src, mixed)]
    assert out_types[0] == out_types[1]
    assert report.fp16_nodes >= 6 and report.casts_inserted >= 3

    images = np.random.default_rng(1).integers(0, 256, size=(2, 3, 8, 8), dtype=np.uint8)
    want, got = _run(src, images), _run(mixed, images)
    finite = np.isfinite(want[0])
    assert np.array_equal(finite, np.isfinite(got[0]))
    np.testing.assert_allclose(got[0][finite], want[0][finite], rtol=2e-3, atol=0.5)
    assert (got[1] == want[1]).mean() > 0.99 and np.array_equal(got[2], want[2])


def test_conversion_errors() -> None:
    mixed, _ = convert_to_mixed_precision(_toy_graph())
    with pytest.raises(MixedPrecisionError, match="already holds fp16"):
        convert_to_mixed_precision(mixed)
    custom = _toy_graph()
    custom.graph.node[4].domain, custom.graph.node[4].op_type = "acme", "FancyConv"
    custom.opset_import.append(helper.make_opsetid("acme", 1))
    with pytest.raises(MixedPrecisionError, match="no type for 'c', written by 'conv' \\(acme::FancyConv\\)"):
        convert_to_mixed_precision(custom)
    custom.graph.value_info.append(helper.make_tensor_value_info("c", FLOAT, None))  # typed, but no schema
    with pytest.raises(MixedPrecisionError, match="has no ONNX schema"):
        convert_to_mixed_precision(custom)


def _plugin_available(flavour: str) -> None:
    if flavour == "plugin" and custom_ops.ort_custom_ops_library() is None:
        reason = custom_ops.missing_library_message()
        if os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1":
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)


@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_faseg_tiny_fp16(flavour: str, tmp_path: Path) -> None:
    _plugin_available(flavour)
    torch.manual_seed(0)
    checkpoint = save_pretrained(build_model(get_preset("faseg_tiny")), tmp_path / "ckpt")
    out = tmp_path / "tiny16.onnx"
    result = export_checkpoint(
        checkpoint, out, ExportOptions(flavour=flavour, precision="fp16", outputs="labels,confidence,logits")
    )
    assert result.precision == "fp16" and result.metadata["faseg.precision"] == "fp16"
    step = next(s for s in result.steps if s.step == "fp16")
    held = "plugin op" if flavour == "plugin" else "deformable attention"
    assert step.details["kept_by_rule"][held] > 0 and step.details["kept_by_rule"]["input stem"] > 0
    model = onnx.load(out)
    types = _types(model)
    assert sum(t.data_type == FLOAT16 for t in model.graph.initializer) > 100
    for node in model.graph.node:  # the sensitive nodes read and write fp32
        if node.op_type in ("GridSample", "TopK") or node.domain == custom_ops.DOMAIN:
            assert all(types[name] == FLOAT for name in node.input if name and types.get(name) in (FLOAT, FLOAT16))
        if node.op_type == "Less":
            assert all(types[name] == FLOAT for name in node.input)
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input} == {"images": TensorProto.UINT8}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.UINT8] + [FLOAT] * 3

    for batch_size in (1, 4):
        report = verify(out, checkpoint, batch_size=batch_size, tensorrt="off")
        ort_report = report["onnxruntime"]
        assert report["precision"] == "fp16" and report["passed"], ort_report
        assert report["tolerances"]["logits_median_abs"] == 2e-2 and ort_report["logits_median_abs"] <= 2e-2
        assert ort_report["logits_max_abs"] > 0  # fp16 moved something: the graph really is fp16


def test_shipped_demo_model_fp16_passes(tmp_path: Path) -> None:
    """The trained demo weights: label agreement ≥ 99.5% and median logit error ≤ 2e-2 (Polygraphy practice)."""
    out = tmp_path / "demo16.onnx"
    export_checkpoint(default_checkpoint(), out, ExportOptions(precision="fp16", outputs="labels,confidence,logits"))
    report = verify(out, batch_size=4, tensorrt="off")
    assert report["passed"], report["onnxruntime"]
    assert report["onnxruntime"]["label_agreement"] >= 0.995
