"""`faseg export onnx`: graph contract, custom-op nodes, ORT parity with torch, metadata and errors.

The tiny model (faseg_tiny, random weights, saved with save_pretrained) is exported once per flavour at
256×256 with logits; every parity check runs batch 1 and batch 4 through the same file. The R50 checks at
512×512 are marked slow. Plugin-flavour runs need ``libfaseg_ort_ops.so`` (``bash export/plugins/build.sh``)
and skip without it unless ``FASEG_REQUIRE_CUSTOM_OPS=1``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime: pip install onnxruntime")

from faseg.export import custom_ops, session  # noqa: E402
from faseg.export.onnx_export import (  # noqa: E402
    DEFAULT_OPSET,
    MAX_IR_VERSION,
    ExportError,
    ExportOptions,
    Slim,
    export_checkpoint,
    parse_outputs,
)
from faseg.export.ops import flavour_kernels, use_kernels  # noqa: E402
from faseg.model import ServingHead, build_model, get_preset  # noqa: E402
from faseg.model.checkpoint import from_pretrained, save_pretrained  # noqa: E402
from faseg.model.ops import registered_kernel  # noqa: E402

from faseg.cli import main  # noqa: E402

REQUIRED = os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1"
LOGITS_ATOL = 1e-3
LABEL_AGREEMENT = 0.999
ALL_OUTPUTS = "labels,confidence,logits"
METADATA_KEYS = {
    "faseg.classes",
    "faseg.palette",
    "faseg.input_size",
    "faseg.preset",
    "faseg.flavour",
    "faseg.precision",
    "faseg.format_version",
}


def _require_library() -> None:
    if custom_ops.ort_custom_ops_library() is None:
        reason = custom_ops.missing_library_message()
        if REQUIRED:
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)


def _save(directory: Path, preset: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_pretrained(build_model(get_preset(preset)), directory)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt") / "faseg_tiny", "faseg_tiny")


@pytest.fixture(scope="module", params=["portable", "plugin"])
def exported(request: pytest.FixtureRequest, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("onnx") / f"tiny_{request.param}.onnx"
    result = export_checkpoint(tiny_checkpoint, out, ExportOptions(flavour=request.param, outputs=ALL_OUTPUTS))
    return result


def _torch_outputs(model: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for t in ServingHead(model, with_logits=True)(torch.from_numpy(images))]


def _check_parity(path: Path, model: torch.nn.Module, size: tuple[int, int], batches=(1, 4)) -> None:
    """One session, several batch sizes: labels ≥ 99.9 % equal, logits / confidence within 1e-3."""
    sess = session.OrtSession(path, session.SessionConfig(device="cpu"))
    rng = np.random.default_rng(0)
    for batch in batches:
        images = rng.integers(0, 256, (batch, *size, 3), dtype=np.uint8)
        ref_labels, ref_conf, ref_logits, ref_masks = _torch_outputs(model, images)
        out = sess.run(images)
        assert out["labels"].shape == (batch, *size) and out["labels"].dtype == np.uint8
        assert out["confidence"].dtype == np.float32
        assert (out["labels"] == ref_labels).mean() >= LABEL_AGREEMENT
        assert np.abs(out["confidence"] - ref_conf).max() <= LOGITS_ATOL
        assert np.abs(out["pred_logits"] - ref_logits).max() <= LOGITS_ATOL
        assert np.abs(out["pred_masks"] - ref_masks).max() <= LOGITS_ATOL


# ---------------------------------------------------------------------------------------------------
# graph contract
# ---------------------------------------------------------------------------------------------------


def test_graph_passes_checker_and_follows_io_contract(exported) -> None:
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto)
    assert proto.ir_version <= MAX_IR_VERSION
    assert {o.domain: o.version for o in proto.opset_import}[""] == DEFAULT_OPSET == exported.opset
    assert exported.inputs == {"images": {"dtype": "uint8", "shape": ["N", 256, 256, 3]}}
    assert exported.outputs == {
        "labels": {"dtype": "uint8", "shape": ["N", 256, 256]},
        "confidence": {"dtype": "float32", "shape": ["N", 256, 256]},
        "pred_logits": {"dtype": "float32", "shape": ["N", 24, 9]},
        "pred_masks": {"dtype": "float32", "shape": ["N", 24, 64, 64]},
    }
    # No GridSample mode spelled the opset-20 way ("linear"): TensorRT's parser would read it as nearest.
    for node in proto.graph.node:
        if node.op_type == "GridSample":
            mode = {a.name: a.s for a in node.attribute}.get("mode", b"bilinear")
            assert mode == b"bilinear"


def test_metadata(exported, tiny_checkpoint: Path) -> None:
    proto = onnx.load(str(exported.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(meta) >= METADATA_KEYS
    info = from_pretrained(tiny_checkpoint).checkpoint_info
    assert json.loads(meta["faseg.classes"]) == info.classes
    assert json.loads(meta["faseg.palette"]) == [list(p) for p in info.palette]
    assert json.loads(meta["faseg.input_size"]) == [256, 256]
    assert meta["faseg.preset"] == "faseg_tiny"
    assert meta["faseg.flavour"] == exported.flavour
    assert meta["faseg.precision"] == "fp32"
    assert meta["faseg.format_version"] == "1"
    assert json.loads(meta["faseg.outputs"]) == ["labels", "confidence", "pred_logits", "pred_masks"]


def test_head_is_optimized(exported) -> None:
    """OptimizeHead: every Einsum became MatMul, ReduceMax + ArgMax became one TopK(k=1) over class-last scores."""
    ops = {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    assert not ops & {"Einsum", "ArgMax", "ReduceMax"}
    details = next(s.details for s in exported.steps if s.step == "optimize")
    assert details["einsum_to_matmul"] >= 2 and details["max_argmax_to_topk"] == 1
    # the semantic scores come out class-last, so the label / confidence TopK runs over the contiguous axis
    assert details["scores_class_last"] == 1
    proto = onnx.load(str(exported.path))
    producers = {out: node for node in proto.graph.node for out in node.output}
    label_topk = producers[producers[producers["labels"].input[0]].input[0]]
    assert label_topk.op_type == "TopK" and {a.name: a.i for a in label_topk.attribute}["axis"] == 2
    # ... and in the plugin flavour the masks are upsampled channels-last, so the product reads them as they come
    # out of the Sigmoid; the portable file keeps the channels-first Resize (other runtimes read it)
    chain = [producers[label_topk.input[0]]]
    for _ in range(4):
        chain.append(producers[chain[-1].input[0]])
    if exported.flavour == "plugin":
        assert details["masks_resized_channels_last"] == 1
        assert [n.op_type for n in chain] == ["MatMul", "Reshape", "Sigmoid", "Resize", "Transpose"]
        assert {a.name: list(a.ints) for a in chain[-1].attribute}["perm"] == [0, 2, 3, 1]
    else:
        assert "masks_resized_channels_last" not in details
        assert [n.op_type for n in chain[:5]] == ["MatMul", "Transpose", "Reshape", "Sigmoid", "Resize"]


@pytest.mark.only_flavour("portable")
def test_portable_has_standard_ops_only(exported) -> None:
    assert exported.flavour == "portable"  # only_flavour deselects the other flavour
    proto = onnx.load(str(exported.path))
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    ops = {n.op_type for n in proto.graph.node}
    assert {"GridSample", "TopK"} <= ops
    assert exported.custom_nodes == {}


@pytest.mark.only_flavour("plugin")
def test_plugin_nodes_follow_the_contract(exported) -> None:
    assert exported.flavour == "plugin"  # only_flavour deselects the other flavour
    proto = onnx.load(str(exported.path))
    assert ("faseg", 1) in {(o.domain, o.version) for o in proto.opset_import}
    assert exported.custom_nodes == {"faseg::FASegMSDeformAttn_TRT": 2, "faseg::FASegTopKCrossAttn_TRT": 2}
    assert "GridSample" not in {n.op_type for n in proto.graph.node}
    constants = {
        out: onnx.numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
        for n in proto.graph.node
        if n.op_type == "Constant"
        for out in n.output
    }
    constants.update({i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer})
    consumers: dict[str, list] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in proto.graph.node:
        if node.domain != "faseg":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b""
        # The contract's output is 4-D [N, Lq, M, D] (MSDA) / [N, Q, C] (HRCA); a Reshape follows.
        assert [c.op_type for c in consumers[node.output[0]]] == ["Reshape"]
        if node.op_type == "FASegMSDeformAttn_TRT":
            assert len(node.input) == 5 and set(attrs) == {"plugin_version", "plugin_namespace"}
            shapes, starts = constants[node.input[1]], constants[node.input[2]]
            assert shapes.dtype == np.int32 and starts.dtype == np.int32
            np.testing.assert_array_equal(shapes, [[8, 8], [16, 16], [32, 32]])  # 1/32, 1/16, 1/8 of 256²
            np.testing.assert_array_equal(starts, [0, 64, 320])
        else:
            assert node.op_type == "FASegTopKCrossAttn_TRT" and len(node.input) == 8
            assert {k: attrs[k] for k in ("num_heads", "divisor", "mode", "level0_h", "level0_w")} == {
                "num_heads": 4,
                "divisor": 32,
                "mode": custom_ops.TOPK_MODES["window"],
                "level0_h": 8,
                "level0_w": 8,
            }


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime vs torch
# ---------------------------------------------------------------------------------------------------


def test_onnxruntime_matches_torch_batch_1_and_4(exported, tiny_checkpoint: Path) -> None:
    if exported.flavour == "plugin":
        _require_library()
    _check_parity(exported.path, from_pretrained(tiny_checkpoint), (256, 256))


def test_session_registers_custom_ops_from_metadata(exported) -> None:
    if exported.flavour == "plugin":
        _require_library()
    sess = session.OrtSession(exported.path, session.SessionConfig(device="cpu", intra_op_threads=1))
    assert sess.flavour == exported.flavour
    assert sess.providers == ["CPUExecutionProvider"] and not sess.on_gpu
    assert sess.input_size == (256, 256)
    assert sess.output_names == ["labels", "confidence", "pred_logits", "pred_masks"]


def test_kernels_are_restored_after_export(exported) -> None:
    assert registered_kernel("ms_deform_attn", "cpu") is None
    assert registered_kernel("topk_cross_attention", "cpu") is None


def test_use_kernels_restores_on_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), use_kernels(flavour_kernels("plugin")):
        assert registered_kernel("ms_deform_attn", "cpu") is not None
        raise RuntimeError("boom")
    assert registered_kernel("ms_deform_attn", "cpu") is None
    assert registered_kernel("topk_cross_attention", "cpu") is None


def test_export_ops_match_the_reference() -> None:
    """The export-time kernels compute what the reference computes (the trace records their graph)."""
    from faseg.model.ops import ms_deform_attn_reference, topk_cross_attention_reference

    torch.manual_seed(0)
    shapes = [(4, 4), (8, 8)]
    value = torch.randn(2, 80, 2, 8)
    loc = torch.rand(2, 5, 2, 2, 3, 2)
    weights = torch.rand(2, 5, 2, 2, 3).softmax(-1)
    plugin_msda = flavour_kernels("plugin")["ms_deform_attn"]
    expected = ms_deform_attn_reference(value, shapes, loc, weights)
    torch.testing.assert_close(plugin_msda(value, shapes, loc, weights), expected)
    c, heads = 16, 2
    args = (
        torch.randn(2, 6, c),
        torch.randn(2, c, 32, 32),
        torch.randn(2, c, 32, 32),
        torch.rand(2, 6, 16).softmax(-1),
        torch.randn(3 * c, c),
        None,
        torch.randn(c, c),
        torch.randn(c),
        heads,
        (4, 4),
    )
    for mode in ("window", "bilinear"):
        ref = topk_cross_attention_reference(*args, mode, 8)
        for flavour in ("portable", "plugin"):
            got = flavour_kernels(flavour)["topk_cross_attention"](*args, mode, 8)
            torch.testing.assert_close(got, ref, msg=f"{flavour} {mode}")


# ---------------------------------------------------------------------------------------------------
# CLI and errors
# ---------------------------------------------------------------------------------------------------


def test_cli_export_default_outputs(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tiny.onnx"
    assert main(["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["outputs"]) == ["labels", "confidence"]
    assert report["flavour"] == "portable" and report["input_size"] == [256, 256]
    assert [s["step"] for s in report["steps"]] == ["capture:torchscript", "optimize", "check", "metadata", "save"]
    sess = session.OrtSession(out, session.SessionConfig(device="cpu"))
    labels = sess.run(np.zeros((3, 256, 256, 3), np.uint8))["labels"]
    assert labels.shape == (3, 256, 256)
    # readable by other users (a non-root service user in the images), not mkstemp's 0600
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("size", ["250x256", "256x100", "0x256"])
def test_size_must_be_a_multiple_of_32(size: str, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    argv = ["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx")]
    rc = main([*argv, "--size", size])
    assert rc == 2
    err = capsys.readouterr().err
    assert "multiple of 32" in err or "positive integers" in err
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_output_name(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    argv = ["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.onnx")]
    assert main([*argv, "--outputs", "labels,probabilities"]) == 2
    assert "unknown output name(s) 'probabilities'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no outputs requested"):
        parse_outputs(",")
    assert parse_outputs("logits,labels") == ("labels", "logits")  # canonical order


def test_checkpoint_that_does_not_load(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    out = tmp_path / "x.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", "onnx", "--checkpoint", str(empty), "--out", str(out)]) == 2
    assert "does not load" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match="does not load"):
        export_checkpoint(broken, out)
    assert not out.exists()


def test_option_errors() -> None:
    with pytest.raises(ExportError, match="unknown precision"):
        ExportOptions(precision="int4")  # int8 is a precision (with calibration data)
    with pytest.raises(ExportError, match="unknown flavour"):
        ExportOptions(flavour="tensorrt")
    with pytest.raises(ExportError, match="unknown capture strategy"):
        ExportOptions(capture="dynamo")


def test_every_capture_name_has_a_strategy() -> None:
    from faseg.export import onnx_capture, onnx_options

    assert tuple(onnx_capture.CAPTURE_STRATEGIES) == onnx_options.CAPTURE_NAMES


def test_slim_needs_onnxslim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # as if not installed
    with pytest.raises(ExportError, match="pip install onnxslim"):
        Slim().run(None)  # fails before it touches the state


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_slim_keeps_the_contract(flavour: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxslim", reason="--slim needs onnxslim")
    if flavour == "plugin":
        _require_library()
    options = ExportOptions(flavour=flavour, outputs=ALL_OUTPUTS, slim=True)
    result = export_checkpoint(tiny_checkpoint, tmp_path / "slim.onnx", options)
    slim = next(step for step in result.steps if step.step == "slim").details
    assert slim["nodes_after"] < slim["nodes_before"]
    if flavour == "plugin":
        assert result.custom_nodes == {"faseg::FASegMSDeformAttn_TRT": 2, "faseg::FASegTopKCrossAttn_TRT": 2}
    _check_parity(result.path, from_pretrained(tiny_checkpoint), (256, 256))


def test_provider_order() -> None:
    all_eps = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = session.choose_providers("auto", list(reversed(all_eps)))
    assert [p if isinstance(p, str) else p[0] for p in chosen] == all_eps
    assert session.choose_providers("cpu", all_eps) == ["CPUExecutionProvider"]
    assert session.choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(session.SessionError, match="onnxruntime-gpu"):
        session.choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(session.SessionError):
        session.SessionConfig(graph_optimization="max")


def test_session_metadata_keys_match_the_exporter() -> None:
    from faseg.export import contract, onnx_export

    assert session.META_FLAVOUR == onnx_export.META_FLAVOUR
    assert session.META_PRECISION == onnx_export.META_PRECISION
    assert contract.META_INPUT_SIZE == onnx_export.META_INPUT_SIZE


# ---------------------------------------------------------------------------------------------------
# R50 at 512×512 (slow)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1500)  # ~4 min per flavour on 2 shared cores: export, torch and ORT at batch 1 and 4
@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_r50_ade20k_512(flavour: str, tmp_path: Path) -> None:
    if flavour == "plugin":
        _require_library()
    checkpoint = _save(tmp_path / "r50", "faseg_r50_ade20k")
    result = export_checkpoint(
        checkpoint,
        tmp_path / f"r50_{flavour}.onnx",
        ExportOptions(size=(512, 512), flavour=flavour, outputs=ALL_OUTPUTS),
    )
    onnx.checker.check_model(str(result.path))
    assert result.inputs["images"]["shape"] == ["N", 512, 512, 3]
    assert result.outputs["pred_masks"]["shape"] == ["N", 100, 128, 128]
    if flavour == "plugin":
        assert result.custom_nodes == {"faseg::FASegMSDeformAttn_TRT": 6, "faseg::FASegTopKCrossAttn_TRT": 3}
    _check_parity(result.path, from_pretrained(checkpoint), (512, 512))
