"""TensorRT: engine building (faseg.export.tensorrt_build), the runtime helper (tensorrt_runtime), the
``faseg export trt`` command, and the two plugins against the PyTorch reference.

The op tests follow mmdeploy's test_ops: one test per op parametrised over backends (``onnxruntime``:
the CPU custom-op library, ``tensorrt``: an engine built from the same one-node ONNX file with
``libfaseg_trt_plugins.so``), each compared with the reference. A backend that is absent skips with the
reason: TensorRT needs ``import tensorrt``, a CUDA device and the plugin library
(``export/plugins/build_cuda.sh``), so its cases skip on the development machines; set
``FASEG_REQUIRE_TENSORRT=1`` where they must run (then they fail instead).

The build steps that need no TensorRT (ONNX inspection, profiles, metadata, the CLI's error path) run
everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from faseg.export import custom_ops, tensorrt_build, tensorrt_runtime
from faseg.export.tensorrt_build import BatchProfile, EngineBuildError, EngineBuildOptions
from faseg.model import ops as model_ops

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

REQUIRED = os.environ.get("FASEG_REQUIRE_TENSORRT") == "1"
FP32_REL = 1e-5
FP16_REL = 1e-2


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (FASEG_REQUIRE_TENSORRT=1)", pytrace=False)
    pytest.skip(reason)


def _rel_error(got: np.ndarray, want: torch.Tensor) -> float:
    want = want.double().numpy()
    return float(np.abs(got.astype(np.float64).reshape(want.shape) - want).max() / max(np.abs(want).max(), 1.0))


# ------------------------------------------------------------------------------------------------
# one-node ONNX files
# ------------------------------------------------------------------------------------------------


def one_node_onnx(path: Path, op_type: str, feed: dict[str, np.ndarray], out_shape, out_dtype, **attrs) -> Path:
    onnx.save(custom_ops.single_node_model(op_type, feed, out_shape, out_dtype, **attrs), str(path))
    return path


def msda_case(dtype):
    shapes = [(8, 12), (4, 6), (2, 3)]
    g = torch.Generator().manual_seed(0)
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 16, generator=g)
    loc = torch.rand(2, 30, 4, 3, 4, 2, generator=g) * 1.6 - 0.3
    weights = torch.rand(2, 30, 4, 3, 4, generator=g)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    value, loc, weights = (t.to(dtype).float() for t in (value, loc, weights))  # the rounded inputs
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    feed = {
        "value": value.numpy().astype(np_dtype),
        "spatial_shapes": np.array(shapes, dtype=np.int32),
        "level_start_index": np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int32),
        "sampling_locations": loc.numpy().astype(np_dtype),
        "attention_weights": weights.numpy().astype(np_dtype),
    }
    want = model_ops.ms_deform_attn_reference(value, shapes, loc, weights)
    return feed, want, (2, 30, 4, 16), np_dtype, {}


def topk_case(mode):
    g = torch.Generator().manual_seed(1)
    level0, window, c, heads, divisor = (4, 6), 4, 64, 4, 4
    h3, w3 = level0[0] * window, level0[1] * window
    query = torch.randn(2, 10, c, generator=g)
    feat = torch.randn(2, c, h3, w3, generator=g)
    pos = torch.randn(2, c, h3, w3, generator=g)
    # Dyadic coarse attention: rankings are exact in fp32 and fp64 alike (see test_cuda_kernels).
    coarse = torch.randint(0, 64, (2, 10, level0[0] * level0[1]), generator=g).float() / 1024
    bound = 1 / math.sqrt(c)
    w_in = (torch.rand(3 * c, c, generator=g) * 2 - 1) * bound
    b_in = torch.randn(3 * c, generator=g) * 0.1
    w_out = (torch.rand(c, c, generator=g) * 2 - 1) * bound
    b_out = torch.randn(c, generator=g) * 0.1
    tensors = dict(query=query, feat=feat, pos=pos, coarse_attn=coarse, in_proj_weight=w_in, in_proj_bias=b_in,
                   out_proj_weight=w_out, out_proj_bias=b_out)  # fmt: skip
    want = model_ops.topk_cross_attention_reference(*tensors.values(), heads, level0, mode, divisor)
    attrs = dict(num_heads=heads, divisor=divisor, mode=custom_ops.TOPK_MODES[mode])
    return {k: v.numpy() for k, v in tensors.items()}, want, (2, 10, c), np.float32, attrs


OP_CASES = {
    "msda-fp32": (custom_ops.MS_DEFORM_ATTN_OP, lambda: msda_case(torch.float32), FP32_REL),
    "msda-fp16": (custom_ops.MS_DEFORM_ATTN_OP, lambda: msda_case(torch.float16), FP16_REL),
    "topk-window": (custom_ops.TOPK_CROSS_ATTN_OP, lambda: topk_case("window"), FP32_REL),
    "topk-bilinear": (custom_ops.TOPK_CROSS_ATTN_OP, lambda: topk_case("bilinear"), FP32_REL),
}


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------


def run_onnxruntime(model_path: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    library = custom_ops.ort_custom_ops_library()
    if library is None:
        _unavailable(custom_ops.missing_library_message())
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, feed)
    return out


def run_tensorrt(model_path: Path, feed: dict[str, np.ndarray], tmp_path: Path) -> np.ndarray:
    reason = tensorrt_runtime.unavailable_reason()
    if reason:
        _unavailable(reason)
    library = tensorrt_runtime.plugin_library_path()
    if library is None or not library.is_file():
        _unavailable(f"{tensorrt_runtime.PLUGIN_LIBRARY_NAME} not built (bash export/plugins/build_cuda.sh)")
    plan = tmp_path / "model.plan"
    result = tensorrt_build.build_engine(
        model_path, plan, EngineBuildOptions(plugin_libraries=(library,), tf32=False, workspace_gib=1)
    )
    assert len(result.plugin_layers) == 1
    engine = tensorrt_runtime.TensorRTEngine.load(plan, plugin_libraries=[library])
    return engine.infer(feed)["output"]


BACKENDS = {"onnxruntime": run_onnxruntime, "tensorrt": run_tensorrt}


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("case", list(OP_CASES))
def test_plugin_op_matches_reference(backend: str, case: str, tmp_path: Path) -> None:
    op_type, make, tolerance = OP_CASES[case]
    feed, want, out_shape, out_dtype, attrs = make()
    model_path = one_node_onnx(tmp_path / f"{case}.onnx", op_type, feed, out_shape, out_dtype, **attrs)
    got = BACKENDS[backend](model_path, feed, tmp_path)
    assert got.shape == out_shape and got.dtype == out_dtype
    assert _rel_error(got, want) <= tolerance


# ------------------------------------------------------------------------------------------------
# engine build steps that need no TensorRT
# ------------------------------------------------------------------------------------------------


def test_batch_profile_parsing() -> None:
    assert BatchProfile.parse("1,4,8") == BatchProfile(1, 4, 8)
    assert BatchProfile.parse("8") == BatchProfile(8, 8, 8)
    assert BatchProfile.parse("2,8") == BatchProfile(2, 8, 8)
    assert str(BatchProfile.parse("1, 4, 8")) == "1,4,8"
    for bad in ("", "0", "4,2", "1,2,3,4", "a,b"):
        with pytest.raises(ValueError):
            BatchProfile.parse(bad)


def _images_model(path: Path, dims: list, metadata: dict[str, str]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["labels"], to=TensorProto.UINT8)],
        "images",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, dims)],
        [helper.make_tensor_value_info("labels", TensorProto.UINT8, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_profiles_from_dynamic_batch_and_metadata(tmp_path: Path) -> None:
    meta = {"faseg.input_size": "[512, 640]", "faseg.classes": '["a", "b"]', "other": "x"}
    summary = tensorrt_build.inspect_onnx(_images_model(tmp_path / "m.onnx", ["N", "H", "W", 3], meta))
    assert summary.inputs == {"images": ("UINT8", ["N", "H", "W", 3])}
    assert summary.custom_nodes == {}
    profiles = tensorrt_build.input_profiles(summary, EngineBuildOptions(batch_profile=BatchProfile(1, 4, 8)))
    assert profiles == {"images": ((1, 512, 640, 3), (4, 512, 640, 3), (8, 512, 640, 3))}
    override = EngineBuildOptions(batch_profile=BatchProfile(2, 2, 2), input_size=(256, 256))
    assert tensorrt_build.input_profiles(summary, override)["images"][2] == (2, 256, 256, 3)

    static = tensorrt_build.inspect_onnx(_images_model(tmp_path / "s.onnx", [3, 64, 64, 3], {}))
    assert tensorrt_build.input_profiles(static, EngineBuildOptions())["images"] == ((3, 64, 64, 3),) * 3

    unknown = tensorrt_build.inspect_onnx(_images_model(tmp_path / "u.onnx", ["N", "H", "W", 3], {}))
    with pytest.raises(EngineBuildError, match="--input-size"):
        tensorrt_build.input_profiles(unknown, EngineBuildOptions())


def test_inspect_counts_plugin_nodes_and_metadata(tmp_path: Path) -> None:
    feed, _, out_shape, out_dtype, attrs = topk_case("window")
    path = one_node_onnx(tmp_path / "topk.onnx", custom_ops.TOPK_CROSS_ATTN_OP, feed, out_shape, out_dtype, **attrs)
    summary = tensorrt_build.inspect_onnx(path)
    assert summary.custom_nodes == {custom_ops.TOPK_CROSS_ATTN_OP: 1}
    assert summary.opsets[custom_ops.DOMAIN] == custom_ops.DOMAIN_VERSION
    meta = tensorrt_build.engine_metadata(
        dataclasses.replace(summary, metadata={"faseg.classes": '["a"]', "x": "y"}),
        tensorrt_version="10.14.1",
        batch_profile=BatchProfile(1, 4, 8),
        profiles={"query": ((2, 10, 64),) * 3},
        precision="fp32",
        plugin_libraries=[Path("/x/libfaseg_trt_plugins.so")],
        plugin_layers=["hrca_0"],
        device_name="GPU",
    )
    assert meta["faseg.classes"] == '["a"]' and "x" not in meta
    assert meta["faseg.engine.batch_profile"] == "1,4,8"
    assert json.loads(meta["faseg.engine.plugin_libraries"]) == ["libfaseg_trt_plugins.so"]
    assert json.loads(meta["faseg.engine.profiles"]) == {"query": [[2, 10, 64]] * 3}
    assert all(isinstance(v, str) for v in meta.values())


def test_plugin_nodes_without_a_library_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed, _, out_shape, out_dtype, _ = msda_case(torch.float32)
    path = one_node_onnx(tmp_path / "msda.onnx", custom_ops.MS_DEFORM_ATTN_OP, feed, out_shape, out_dtype)
    summary = tensorrt_build.inspect_onnx(path)
    monkeypatch.setenv(tensorrt_runtime.PLUGIN_LIBRARY_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(EngineBuildError, match="--plugins"):
        tensorrt_build._plugin_libraries(summary, EngineBuildOptions())


def _export_parser() -> argparse.ArgumentParser:
    from faseg.commands.export_trt import register_trt

    parser = argparse.ArgumentParser(prog="faseg")
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export")
    register_trt(export.add_subparsers(dest="target", required=True))
    return parser


def test_cli_registers_export_trt(tmp_path: Path) -> None:
    args = _export_parser().parse_args(
        ["export", "trt", "--onnx", "m.onnx", "--out", "m.plan", "--batch-profile", "1,2,4",
         "--timing-cache", "t.cache", "--plugins", "a.so", "--plugins", "b.so"]
    )  # fmt: skip
    assert args.target == "trt" and args.batch_profile == "1,2,4" and args.plugins == ["a.so", "b.so"]
    assert args.timing_cache == "t.cache" and callable(args.func)


def test_cli_export_trt_reports_missing_tensorrt(tmp_path: Path) -> None:
    if tensorrt_runtime.unavailable_reason() is None:
        pytest.skip("TensorRT is available here")
    from faseg.commands import CLIError

    model = _images_model(tmp_path / "m.onnx", ["N", 64, 64, 3], {})
    args = _export_parser().parse_args(["export", "trt", "--onnx", str(model), "--out", str(tmp_path / "m.plan")])
    with pytest.raises(CLIError, match="tensorrt"):
        args.func(args)
    assert not (tmp_path / "m.plan").exists()


# ------------------------------------------------------------------------------------------------
# a full engine with TensorRT
# ------------------------------------------------------------------------------------------------


def test_build_engine_writes_plan_metadata_and_timing_cache(tmp_path: Path) -> None:
    reason = tensorrt_runtime.unavailable_reason()
    if reason:
        _unavailable(reason)
    meta = {"faseg.input_size": "[64, 64]", "faseg.classes": '["a", "b"]'}
    model = _images_model(tmp_path / "m.onnx", ["N", "H", "W", 3], meta)
    cache = tmp_path / "timing.cache"
    result = tensorrt_build.build_engine(
        model, tmp_path / "m.plan", EngineBuildOptions(batch_profile=BatchProfile(1, 2, 4), timing_cache=cache)
    )
    assert result.engine.is_file() and cache.is_file()
    sidecar = json.loads(result.metadata_file.read_text())
    assert sidecar["faseg.classes"] == '["a", "b"]' and sidecar["faseg.engine.batch_profile"] == "1,2,4"
    engine = tensorrt_runtime.TensorRTEngine.load(result.engine, plugin_libraries=[])
    assert engine.max_batch_size == 4 and engine.metadata["faseg.input_size"] == "[64, 64]"
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(engine.infer({"images": images})["labels"], images)
