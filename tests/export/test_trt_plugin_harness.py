"""FASeg's TensorRT plugins driven through TensorRT's IPluginV3 calls, without TensorRT.

``faseg_trt_plugin_harness`` (export/plugins/tensorrt/tests/plugin_harness.cpp, built by
``export/plugins/build_cuda.sh``) dlopens ``libfaseg_trt_plugins.so`` and runs one plugin per case as an engine
would: getCreators → createPlugin(fields) → getOutputDataTypes → getOutputShapes (through its own
IExprBuilder) → supportsFormatCombination → configurePlugin → getWorkspaceSize → getFieldsToSerialize →
attachToContext → onShapeChange → enqueue, then createPlugin from the serialized fields → enqueue again. This
module writes each case's inputs to files, runs the harness and compares its output with the PyTorch reference
(``faseg.model.ops``): fp32 ≤ 1e-5 relative to the output's magnitude, fp16 ≤ 1e-2, the re-created plugin's
output bit-identical.

- Host steps (``--host-only``: every call before the first CUDA call, and the re-creation) run wherever the
  harness is built, GPU or not.
- The enqueue tests need a CUDA device; they skip without one, unless ``FASEG_REQUIRE_CUDA_KERNELS=1`` (the
  device check sets it): then they fail.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from faseg.export import custom_ops
from faseg.model.ops import ms_deform_attn_reference, topk_cross_attention_reference

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("FASEG_CUDA_BUILD_DIR", REPO / "build" / "cuda"))
HARNESS = BUILD / "tensorrt" / "faseg_trt_plugin_harness"
PLUGINS = BUILD / "tensorrt" / "libfaseg_trt_plugins.so"
REQUIRED = os.environ.get("FASEG_REQUIRE_CUDA_KERNELS") == "1"
FP32_REL = 1e-5
FP16_REL = 1e-2
MSDA = "FASegMSDeformAttn_TRT"
TOPK = "FASegTopKCrossAttn_TRT"
TYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.int32): "int32"}


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (FASEG_REQUIRE_CUDA_KERNELS=1)", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------------------------------
# cases: (plugin, fields, inputs, reference output)
# ------------------------------------------------------------------------------------------------


def msda_case(dtype: np.dtype, seed: int = 0):
    """The pixel decoder's layout at a reduced size: 3 levels, 8 heads of 32, 4 points, every token a query."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 16), (8, 8), (4, 4)]
    n, m, d, p = 2, 8, 32, 4
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g)
    loc = torch.rand(n, s, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2  # partly outside the maps
    weights = torch.rand(n, s, m, len(shapes), p, generator=g)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    torch_dtype = torch.float16 if dtype == np.float16 else torch.float32
    value, loc, weights = (t.to(torch_dtype) for t in (value, loc, weights))
    # The reference sees exactly the (rounded) inputs, computed in fp32.
    want = ms_deform_attn_reference(value.float(), shapes, loc.float(), weights.float()).view(n, s, m, d)
    starts = np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int32)
    inputs = [value.numpy(), np.array(shapes, dtype=np.int32), starts, loc.numpy(), weights.numpy()]
    return MSDA, {}, inputs, want


def topk_case(mode: str, explicit_level0: bool, seed: int = 1):
    """HRCA at a reduced 256x256 input: 1/32 map 8x8, 1/4 map 64x64, 100 queries of 256 channels, 8 heads.

    coarse_attn holds multiples of 2^-10 (exact in fp32 and fp64), so the reference's fp32 ranking equals the
    plugin's fp64 ranking and ties break the same way (see tests/model/test_cuda_kernels.py)."""
    g = torch.Generator().manual_seed(seed)
    n, q, c, heads, level0, window, divisor = 2, 100, 256, 8, (8, 8), 8, 4
    h3, w3 = level0[0] * window, level0[1] * window
    query = torch.randn(n, q, c, generator=g)
    feat = torch.randn(n, c, h3, w3, generator=g)
    pos = torch.randn(n, c, h3, w3, generator=g)
    coarse = torch.randint(0, 64, (n, q, level0[0] * level0[1]), generator=g).float() / 1024
    bound = 1 / math.sqrt(c)
    w_in = (torch.rand(3 * c, c, generator=g) * 2 - 1) * bound
    b_in = torch.randn(3 * c, generator=g) * 0.1
    w_out = (torch.rand(c, c, generator=g) * 2 - 1) * bound
    b_out = torch.randn(c, generator=g) * 0.1
    tensors = [query, feat, pos, coarse, w_in, b_in, w_out, b_out]
    want = topk_cross_attention_reference(*tensors, heads, level0, mode, divisor)
    fields = {"num_heads": heads, "divisor": divisor, "mode": {"window": 0, "bilinear": 1}[mode]}
    if explicit_level0:
        fields.update(level0_h=level0[0], level0_w=level0[1])
    return TOPK, fields, [t.numpy() for t in tensors], want


CASES = {
    "msda-fp32": lambda: msda_case(np.dtype(np.float32)),
    "msda-fp16": lambda: msda_case(np.dtype(np.float16)),
    "topk-window-fp32": lambda: topk_case("window", explicit_level0=True),
    "topk-window-derived-level0-fp32": lambda: topk_case("window", explicit_level0=False),
    "topk-bilinear-fp32": lambda: topk_case("bilinear", explicit_level0=True),
}


def write_case(directory: Path, plugin: str, fields: dict[str, int], inputs: list[np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"plugin {plugin}"]
    lines += [f"field {name} int32 {value}" for name, value in fields.items()]
    for i, array in enumerate(inputs):
        lines.append(" ".join(["input", TYPE_NAMES[array.dtype], *map(str, array.shape)]))
        np.ascontiguousarray(array).tofile(directory / f"input{i}.bin")
    (directory / "case.txt").write_text("\n".join(lines) + "\n")
    return directory


def run_harness(directory: Path, *, host_only: bool) -> tuple[int, dict]:
    command = [str(HARNESS), str(PLUGINS), str(directory), *(["--host-only"] if host_only else [])]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    report = json.loads((directory / "report.json").read_text()) if (directory / "report.json").is_file() else {}
    if not report:
        raise AssertionError(f"harness wrote no report (exit {proc.returncode}): {proc.stderr}")
    return proc.returncode, report


@pytest.fixture(scope="module")
def harness() -> Path:
    for path in (HARNESS, PLUGINS):
        if not path.is_file():
            _unavailable(f"{path} missing: run `bash export/plugins/build_cuda.sh` (needs nvcc)")
    return HARNESS


def _failed_steps(report: dict) -> list[dict]:
    return [s for s in report["steps"] if not s["ok"]]


def _expected_dims(plugin: str, inputs: list[np.ndarray]) -> list[int]:
    if plugin == MSDA:
        n, _, m, d = inputs[0].shape
        return [n, inputs[3].shape[1], m, d]
    return list(inputs[0].shape)


# ------------------------------------------------------------------------------------------------
# host steps (no GPU)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_host_steps(harness: Path, tmp_path: Path, case: str) -> None:
    plugin, fields, inputs, _ = CASES[case]()
    code, report = run_harness(write_case(tmp_path, plugin, fields, inputs), host_only=True)
    assert code == 0 and not _failed_steps(report), _failed_steps(report)
    assert report["enqueue"] == "skipped: --host-only"
    assert report["output_dims"] == _expected_dims(plugin, inputs)
    assert report["output_type"] == TYPE_NAMES[inputs[0].dtype]
    steps = [s["step"] for s in report["steps"]]
    for step in ("getOutputShapes", "supportsFormatCombination (every position, LINEAR)", "configurePlugin",
                 "getWorkspaceSize", "attachToContext", "onShapeChange",
                 "createPlugin(kRUNTIME) from the serialized fields", "re-created: onShapeChange"):  # fmt: skip
        assert step in steps
    if plugin == TOPK:
        want_fields = {"level0_h": 0, "level0_w": 0, **fields}  # derived level0 serializes as 0 x 0
        assert report["serialized_fields"] == want_fields
        assert report["workspace_bytes"] > 0
    else:
        assert report["serialized_fields"] == {} and report["workspace_bytes"] == 0


def test_topk_fp16_is_refused_by_get_output_data_types(harness: Path, tmp_path: Path) -> None:
    plugin, fields, inputs, _ = topk_case("window", explicit_level0=True)
    inputs[1] = inputs[1].astype(np.float16)
    code, report = run_harness(write_case(tmp_path, plugin, fields, inputs), host_only=True)
    assert code == 1
    assert [s["step"] for s in _failed_steps(report)] == ["getOutputDataTypes"]
    assert any("every input must be float32" in message for message in report["logged"])


def test_msda_inconsistent_dims_are_refused_by_configure_plugin(harness: Path, tmp_path: Path) -> None:
    plugin, fields, inputs, _ = msda_case(np.dtype(np.float32))
    inputs[4] = inputs[4][..., :3].copy()  # attention_weights with P = 3 against P = 4 locations
    code, report = run_harness(write_case(tmp_path, plugin, fields, inputs), host_only=True)
    assert code == 1
    assert [s["step"] for s in _failed_steps(report)] == ["configurePlugin"]


# ------------------------------------------------------------------------------------------------
# enqueue on a GPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_enqueue_matches_the_reference(harness: Path, tmp_path: Path, case: str) -> None:
    if not torch.cuda.is_available():
        _unavailable(f"no CUDA device (torch {torch.__version__})")
    plugin, fields, inputs, want = CASES[case]()
    code, report = run_harness(write_case(tmp_path, plugin, fields, inputs), host_only=False)
    assert code == 0 and not _failed_steps(report), _failed_steps(report)
    assert report["enqueue"] == "ran" and report["roundtrip_identical"] is True
    dtype = np.dtype(report["output_type"])
    got = np.fromfile(tmp_path / "output0.bin", dtype=dtype).reshape(report["output_dims"])
    assert np.isfinite(got).all(), "unwritten (NaN-poisoned) or non-finite output"
    want = want.double().numpy().reshape(got.shape)
    rel = float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1.0))
    assert rel <= (FP16_REL if dtype == np.float16 else FP32_REL), rel


# ------------------------------------------------------------------------------------------------
# the same cases through the ONNX Runtime CUDA custom ops (build/cuda/ort/libfaseg_ort_ops.so)
# ------------------------------------------------------------------------------------------------

ORT_CUDA_LIBRARY = BUILD / "ort" / "libfaseg_ort_ops.so"
INPUT_NAMES = {
    MSDA: ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"],
    TOPK: ["query", "feat", "pos", "coarse_attn", "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias"],
}


def ort_cuda_unavailable() -> str:
    """Why the ORT CUDA ops cannot run here ("" when they can). Never a failure: the lent GPU machines have
    the CPU-only `onnxruntime` package, and onnxruntime-gpu cannot be installed there."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnx / onnxruntime not importable: {exc}"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (
            f"onnxruntime {ort.__version__} ({Path(ort.__file__).parent}) offers {providers}: no "
            "CUDAExecutionProvider, so the CUDA custom ops cannot run (they need the onnxruntime-gpu package)"
        )
    if not ORT_CUDA_LIBRARY.is_file():
        return f"{ORT_CUDA_LIBRARY} missing: run `bash export/plugins/build_cuda.sh`"
    return ""


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CASES))
def test_ort_cuda_op_matches_the_reference(case: str) -> None:
    reason = ort_cuda_unavailable()
    if reason:
        pytest.skip(reason)
    import onnxruntime as ort

    plugin, fields, inputs, want = CASES[case]()
    feed = dict(zip(INPUT_NAMES[plugin], inputs))
    model = custom_ops.single_node_model(plugin, feed, _expected_dims(plugin, inputs), inputs[0].dtype, **fields)
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(ORT_CUDA_LIBRARY))
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # the node must run on CUDA
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
    (got,) = session.run(None, feed)
    want = want.double().numpy().reshape(got.shape)
    rel = float(np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1.0))
    assert rel <= (FP16_REL if got.dtype == np.float16 else FP32_REL), rel
