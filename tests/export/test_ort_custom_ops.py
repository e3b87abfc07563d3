"""ONNX Runtime CPU custom ops (libfaseg_ort_ops.so) against the PyTorch reference ops.

Each test builds a one-node ONNX graph by hand (opset 17, IR 10, domain ``faseg`` v1), runs it in ORT CPU
with the library registered and compares with ``faseg.model.ops`` to 1e-5 (max abs, float32).

Skips when the library is not built (``export/plugins/build.sh``) or onnx/onnxruntime are not installed,
unless ``FASEG_REQUIRE_CUSTOM_OPS=1``: then those conditions fail the tests (CI builds the library).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from faseg.export import custom_ops
from faseg.model.ops import hrca_select, ms_deform_attn_reference, topk_cross_attention_reference

REQUIRED = os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1"
ATOL = 1e-5


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
    pytest.skip(reason)


try:
    import onnx
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
except ImportError as exc:  # pragma: no cover - depends on the environment
    _IMPORT_ERROR: str | None = f"onnx/onnxruntime not installed ({exc}); pip install onnx onnxruntime"
else:
    _IMPORT_ERROR = None

ORT_ERRORS: tuple[type[BaseException], ...] = (
    (ort_state.InvalidArgument, ort_state.Fail, ort_state.RuntimeException, ort_state.InvalidGraph)
    if _IMPORT_ERROR is None
    else ()
)


@pytest.fixture(scope="module")
def ops_library() -> Path:
    if _IMPORT_ERROR is not None:
        _unavailable(_IMPORT_ERROR)
    library = custom_ops.ort_custom_ops_library()
    if library is None:
        _unavailable(custom_ops.missing_library_message())
    return library


# ------------------------------------------------------------------------------------------------
# graph helpers
# ------------------------------------------------------------------------------------------------


def _out_shape(op_type: str, inputs: dict[str, np.ndarray]) -> list[int]:
    if op_type == custom_ops.MS_DEFORM_ATTN_OP:
        n, _, m, d = inputs["value"].shape
        return [n, inputs["sampling_locations"].shape[1], m, d]
    return list(inputs["query"].shape)


def _session(library: Path, model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _model(op_type: str, inputs: dict[str, np.ndarray], **attrs: object) -> onnx.ModelProto:
    return custom_ops.single_node_model(op_type, inputs, _out_shape(op_type, inputs), **attrs)


def _run(library: Path, op_type: str, inputs: dict[str, np.ndarray], **attrs: object) -> np.ndarray:
    (out,) = _session(library, _model(op_type, inputs, **attrs)).run(None, inputs)
    return out


def _max_abs(a: np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    b = b.numpy() if isinstance(b, torch.Tensor) else b
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ------------------------------------------------------------------------------------------------
# FASegMSDeformAttn_TRT
# ------------------------------------------------------------------------------------------------


def _msda_inputs(
    batch: int, heads: int, head_dim: int, queries: int, points: int, shapes: list[tuple[int, int]], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(batch, s, heads, head_dim, generator=g)
    # Spread over [-0.3, 1.3]: many samples partly or fully outside the map.
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=g) * 1.6 - 0.3
    # Exact borders and pixel centres of every level: edges 0 and 1, first/last pixel centre, half a pixel
    # outside (a neighbour weight of exactly 0 on the map), and the corners.
    for lvl, (h, w) in enumerate(shapes):
        special = [
            (0.0, 0.0),
            (1.0, 1.0),
            (0.0, 1.0),
            (0.5 / w, 0.5 / h),
            (1.0 - 0.5 / w, 1.0 - 0.5 / h),
            (-0.5 / w, 0.5),
            (0.5, 1.0 + 0.5 / h),
            (1.0 + 0.5 / w, -0.5 / h),
            (0.5, 0.5),
            (-2.0, 3.0),
        ]
        for i, (x, y) in enumerate(special):
            q, p = divmod(i, points)
            if q < queries:
                loc[:, q, :, lvl, p] = torch.tensor([x, y])
    weights = torch.rand(batch, queries, heads, levels, points, generator=g)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value, loc, weights


def _msda_feed(value, shapes, loc, weights, dtype=np.float32) -> dict[str, np.ndarray]:
    starts = np.cumsum([0] + [h * w for h, w in shapes[:-1]]).astype(np.int32)
    return {
        "value": value.numpy().astype(dtype),
        "spatial_shapes": np.asarray(shapes, dtype=np.int32).reshape(-1, 2),
        "level_start_index": starts,
        "sampling_locations": loc.numpy().astype(dtype),
        "attention_weights": weights.numpy().astype(dtype),
    }


MSDA_CASES = {
    # batch, heads, head_dim, queries, points, spatial shapes
    "4-levels-nonsquare": (2, 4, 8, 9, 3, [(3, 5), (6, 4), (1, 1), (2, 7)]),
    "1-level": (2, 2, 5, 4, 4, [(5, 3)]),
    "mask2former-like": (2, 8, 32, 12, 4, [(4, 6), (8, 12), (16, 24)]),
    # D = 12: one 8-channel block and a 4-channel tail; M*L*P = 18 samples: two blocks of 8 and a tail.
    "head-dim-12": (2, 3, 12, 7, 3, [(5, 6), (3, 2)]),
    # D = 40: a 32-channel and an 8-channel block; 600 queries split into several parallel chunks.
    "head-dim-40-many-queries": (2, 2, 40, 300, 2, [(9, 11), (4, 5)]),
}


@pytest.mark.parametrize("case", list(MSDA_CASES), ids=list(MSDA_CASES))
def test_ms_deform_attn_matches_reference(ops_library: Path, case: str) -> None:
    batch, heads, head_dim, queries, points, shapes = MSDA_CASES[case]
    value, loc, weights = _msda_inputs(batch, heads, head_dim, queries, points, shapes, seed=1)
    expected = ms_deform_attn_reference(value, shapes, loc, weights)  # (N, Lq, M·D)

    out = _run(ops_library, custom_ops.MS_DEFORM_ATTN_OP, _msda_feed(value, shapes, loc, weights))

    assert out.shape == (batch, queries, heads, head_dim)
    assert out.dtype == np.float32
    assert _max_abs(out.reshape(batch, queries, heads * head_dim), expected) <= ATOL


def test_ms_deform_attn_simd_and_portable_kernels_are_bit_identical(
    ops_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel picks its AVX2 version when the CPU has AVX2; FASEG_ORT_OPS_PORTABLE=1 (read at every call)
    # forces the portable one. Both must give the same bits, NaN locations and off-map samples included.
    shapes = [(9, 11), (4, 5), (1, 3)]
    value, loc, weights = _msda_inputs(2, 3, 44, 40, 3, shapes, seed=6)
    loc[0, :5, 0, 0, 0, 0] = float("nan")
    loc[1, 3, 1, 2, :, 1] = float("nan")
    feed = _msda_feed(value, shapes, loc, weights)
    session = _session(ops_library, _model(custom_ops.MS_DEFORM_ATTN_OP, feed))
    monkeypatch.delenv("FASEG_ORT_OPS_PORTABLE", raising=False)
    (default,) = session.run(None, feed)
    monkeypatch.setenv("FASEG_ORT_OPS_PORTABLE", "1")
    (portable,) = session.run(None, feed)
    assert np.all(np.isfinite(default))
    assert np.array_equal(default.view(np.uint32), portable.view(np.uint32))


def test_ms_deform_attn_points_outside_contribute_zero(ops_library: Path) -> None:
    shapes = [(3, 4), (2, 2)]
    value, loc, weights = _msda_inputs(1, 2, 4, 3, 2, shapes, seed=2)
    loc[:] = torch.tensor([-0.6, 1.7])  # every neighbour of every sample is off the map
    out = _run(ops_library, custom_ops.MS_DEFORM_ATTN_OP, _msda_feed(value, shapes, loc, weights))
    assert np.all(out == 0.0)


def test_ms_deform_attn_without_plugin_attributes(ops_library: Path) -> None:
    # plugin_version / plugin_namespace are optional for ORT (the TRT parser defaults them to "1" / "").
    shapes = [(2, 3), (4, 1)]
    value, loc, weights = _msda_inputs(2, 2, 3, 5, 2, shapes, seed=3)
    feed = _msda_feed(value, shapes, loc, weights)
    out = _run(ops_library, custom_ops.MS_DEFORM_ATTN_OP, feed, plugin_attributes=False)
    expected = ms_deform_attn_reference(value, shapes, loc, weights)
    assert _max_abs(out.reshape(expected.shape), expected) <= ATOL


def test_ms_deform_attn_fp16_io(ops_library: Path) -> None:
    shapes = [(3, 5), (6, 4)]
    value, loc, weights = _msda_inputs(2, 4, 8, 6, 3, shapes, seed=4)
    feed = _msda_feed(value, shapes, loc, weights, dtype=np.float16)
    out = _run(ops_library, custom_ops.MS_DEFORM_ATTN_OP, feed, out_dtype=np.float16)
    assert out.dtype == np.float16
    # fp32 compute on the fp16-rounded inputs; only the final rounding to fp16 differs.
    expected = ms_deform_attn_reference(
        torch.from_numpy(feed["value"]).float(),
        shapes,
        torch.from_numpy(feed["sampling_locations"]).float(),
        torch.from_numpy(feed["attention_weights"]).float(),
    )
    np.testing.assert_allclose(
        out.reshape(expected.shape).astype(np.float32), expected.numpy(), atol=2e-3, rtol=1e-3
    )


def test_ms_deform_attn_rejects_inconsistent_level_start_index(ops_library: Path) -> None:
    shapes = [(3, 5), (6, 4)]
    value, loc, weights = _msda_inputs(1, 2, 4, 3, 2, shapes, seed=5)
    feed = _msda_feed(value, shapes, loc, weights)
    feed["level_start_index"] = np.array([0, 14], dtype=np.int32)
    session = _session(ops_library, _model(custom_ops.MS_DEFORM_ATTN_OP, feed))
    with pytest.raises(ORT_ERRORS, match="level_start_index"):
        session.run(None, feed)


# ------------------------------------------------------------------------------------------------
# FASegTopKCrossAttn_TRT
# ------------------------------------------------------------------------------------------------

TOPK_INPUTS = (
    "query",
    "feat",
    "pos",
    "coarse_attn",
    "in_proj_weight",
    "in_proj_bias",
    "out_proj_weight",
    "out_proj_bias",
)


def _topk_tensors(
    batch: int, queries: int, channels: int, level0: tuple[int, int], window: int, seed: int
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h0, w0 = level0
    c = channels
    return {
        "query": torch.randn(batch, queries, c, generator=g),
        "feat": torch.randn(batch, c, h0 * window, w0 * window, generator=g),
        "pos": torch.randn(batch, c, h0 * window, w0 * window, generator=g),
        "coarse_attn": torch.randn(batch, queries, h0 * w0, generator=g).mul(3).softmax(-1),
        "in_proj_weight": torch.randn(3 * c, c, generator=g) / c**0.5,
        "in_proj_bias": torch.randn(3 * c, generator=g) * 0.1,
        "out_proj_weight": torch.randn(c, c, generator=g) / c**0.5,
        "out_proj_bias": torch.randn(c, generator=g) * 0.1,
    }


def _topk_reference(
    t: dict[str, torch.Tensor], num_heads: int, level0, mode: str, divisor: int
) -> torch.Tensor:
    return topk_cross_attention_reference(*(t[k] for k in TOPK_INPUTS), num_heads, level0, mode, divisor)


def _topk_run(
    library: Path, t: dict[str, torch.Tensor], num_heads: int, level0, mode: str, divisor: int
) -> np.ndarray:
    feed = {k: t[k].numpy() for k in TOPK_INPUTS}
    return _run(
        library,
        custom_ops.TOPK_CROSS_ATTN_OP,
        feed,
        num_heads=num_heads,
        divisor=divisor,
        mode=custom_ops.TOPK_MODES[mode],
        level0_h=level0[0],
        level0_w=level0[1],
    )


def _ranked_scores(coarse_attn: torch.Tensor, level0, window: int, mode: str) -> torch.Tensor:
    """(B, S) ranking values the op sorts: token scores (window) or the upsampled map (bilinear)."""
    score = coarse_attn.sum(dim=1)
    if mode == "window":
        return score
    h0, w0 = level0
    up = F.interpolate(
        score.view(-1, 1, h0, w0), size=(h0 * window, w0 * window), mode="bilinear", align_corners=False
    )
    return up.flatten(1)


def _tied_coarse_attn(
    batch: int, queries: int, level0, window: int, mode: str, divisor: int
) -> tuple[torch.Tensor, int]:
    """coarse_attn whose ranking ties across the top-k cut in every batch element.

    Entries are multiples of 1/64 and every score is an integer multiple of 1/64, so sums and the bilinear
    upsample (weights multiples of 1/(2·window)) are exact in any evaluation order: ties are exact in torch
    and in the kernel. Returns the tensor and the number of ranked entries kept.
    """
    h0, w0 = level0
    s0 = h0 * w0
    keep = (s0 // divisor) * (window * window if mode == "bilinear" else 1)
    for seed in range(1000):
        g = torch.Generator().manual_seed(seed)
        totals = torch.randint(0, 5, (batch, s0), generator=g) * queries  # score in units of 1/64
        # Split every total into `queries` non-negative integer parts (different per column).
        cuts = torch.sort(torch.randint(0, 1 << 20, (batch, queries - 1, s0), generator=g), dim=1).values
        frac = torch.cat([torch.zeros(batch, 1, s0), cuts / float(1 << 20), torch.ones(batch, 1, s0)], dim=1)
        bounds = torch.round(frac * totals[:, None, :]).long()
        parts = bounds[:, 1:] - bounds[:, :-1]
        coarse = parts.float() / 64.0
        assert torch.equal(parts.sum(dim=1), totals)
        ranked = torch.sort(_ranked_scores(coarse, level0, window, mode), dim=-1, descending=True).values
        if bool((ranked[:, keep - 1] == ranked[:, keep]).all()):
            return coarse, keep
    raise AssertionError("no tied construction found")


TOPK_SHAPE = {"batch": 2, "queries": 5, "channels": 32, "level0": (4, 6), "window": 4, "divisor": 8}


@pytest.mark.parametrize("num_heads", [2, 8])
@pytest.mark.parametrize("mode", ["window", "bilinear"])
def test_topk_cross_attn_matches_reference(ops_library: Path, mode: str, num_heads: int) -> None:
    s = TOPK_SHAPE
    t = _topk_tensors(s["batch"], s["queries"], s["channels"], s["level0"], s["window"], seed=10 + num_heads)
    expected = _topk_reference(t, num_heads, s["level0"], mode, s["divisor"])
    out = _topk_run(ops_library, t, num_heads, s["level0"], mode, s["divisor"])
    assert out.shape == tuple(expected.shape)
    assert _max_abs(out, expected) <= ATOL


@pytest.mark.parametrize("num_heads", [2, 8])
@pytest.mark.parametrize("mode", ["window", "bilinear"])
def test_topk_cross_attn_ties_pick_lower_index(ops_library: Path, mode: str, num_heads: int) -> None:
    s = TOPK_SHAPE
    t = _topk_tensors(s["batch"], s["queries"], s["channels"], s["level0"], s["window"], seed=20 + num_heads)
    t["coarse_attn"], _ = _tied_coarse_attn(
        s["batch"], s["queries"], s["level0"], s["window"], mode, s["divisor"]
    )

    expected = _topk_reference(t, num_heads, s["level0"], mode, s["divisor"])
    out = _topk_run(ops_library, t, num_heads, s["level0"], mode, s["divisor"])
    assert _max_abs(out, expected) <= ATOL

    if mode == "window":
        # The tie matters: give the first *unselected* tied token a hair more score and the selection (and
        # the output) changes, so agreeing above means both broke the tie the same way (lower index).
        _, _, selected = hrca_select(t["coarse_attn"], t["feat"], t["pos"], s["level0"], mode, s["divisor"])
        score = t["coarse_attn"].sum(dim=1)
        bumped = t["coarse_attn"].clone()
        for b in range(s["batch"]):
            cut = score[b, selected[b, -1]]
            tied = [i for i in range(score.shape[1]) if score[b, i] == cut and i not in selected[b].tolist()]
            assert tied, "construction must tie across the cut"
            bumped[b, 0, tied[0]] += 1.0 / 64.0
        other = _topk_reference({**t, "coarse_attn": bumped}, num_heads, s["level0"], mode, s["divisor"])
        assert _max_abs(other.numpy(), expected) > 1e-3


def test_topk_cross_attn_larger_nonsquare_default_divisor(ops_library: Path) -> None:
    # 1/32 map 3x11 (S0 = 33, k = 33 // 32 = 1), window 8, C = 64, 8 heads, batch 2.
    level0, window, num_heads = (3, 11), 8, 8
    t = _topk_tensors(2, 7, 64, level0, window, seed=30)
    for mode in ("window", "bilinear"):
        expected = _topk_reference(t, num_heads, level0, mode, custom_ops.TOPK_DEFAULT_DIVISOR)
        out = _topk_run(ops_library, t, num_heads, level0, mode, custom_ops.TOPK_DEFAULT_DIVISOR)
        assert _max_abs(out, expected) <= ATOL, mode


@pytest.mark.parametrize("mode", ["window", "bilinear"])
@pytest.mark.parametrize("channels,num_heads", [(36, 3), (64, 4)], ids=["dim-tails", "dims-multiple-of-8"])
def test_topk_cross_attn_simd_and_portable_kernels_are_bit_identical(
    ops_library: Path, monkeypatch: pytest.MonkeyPatch, mode: str, channels: int, num_heads: int
) -> None:
    # AVX2 dot products vs the portable ones (FASEG_ORT_OPS_PORTABLE=1, read at every call): same bits.
    # C = 36, 3 heads: C and head_dim 12 are 8-lane blocks plus a tail of 4; C = 64, 4 heads: no tails.
    # k = 2 windows of 3x3 = 18 memory tokens (4 rows at a time, then a remainder of 2); 7 queries.
    level0, window, divisor = (2, 3), 3, 3
    t = _topk_tensors(2, 7, channels, level0, window, seed=31)
    feed = {k: t[k].numpy() for k in TOPK_INPUTS}
    attrs = {"num_heads": num_heads, "divisor": divisor, "mode": custom_ops.TOPK_MODES[mode]}
    model = _model(custom_ops.TOPK_CROSS_ATTN_OP, feed, level0_h=2, level0_w=3, **attrs)
    session = _session(ops_library, model)
    monkeypatch.delenv("FASEG_ORT_OPS_PORTABLE", raising=False)
    (default,) = session.run(None, feed)
    monkeypatch.setenv("FASEG_ORT_OPS_PORTABLE", "1")
    (portable,) = session.run(None, feed)
    assert np.array_equal(default.view(np.uint32), portable.view(np.uint32))
    assert _max_abs(default, _topk_reference(t, num_heads, level0, mode, divisor)) <= ATOL


def test_topk_cross_attn_derives_level0_when_zero(ops_library: Path) -> None:
    s = TOPK_SHAPE
    t = _topk_tensors(s["batch"], s["queries"], s["channels"], s["level0"], s["window"], seed=40)
    expected = _topk_reference(t, 2, s["level0"], "window", s["divisor"])
    out = _topk_run(ops_library, t, 2, (0, 0), "window", s["divisor"])
    assert _max_abs(out, expected) <= ATOL


def test_topk_cross_attn_bad_hr_shape_is_an_ort_error(ops_library: Path) -> None:
    # H3 = 17 is not a multiple of level0_h = 4: the op must fail with an ORT error, not crash.
    s = TOPK_SHAPE
    t = _topk_tensors(1, 3, 16, s["level0"], s["window"], seed=50)
    t["feat"] = torch.randn(1, 16, 17, 24)
    t["pos"] = torch.randn(1, 16, 17, 24)
    with pytest.raises(ORT_ERRORS, match="multiple"):
        _topk_run(ops_library, t, 2, s["level0"], "window", s["divisor"])
    with pytest.raises(ORT_ERRORS, match="multiple"):
        _topk_run(ops_library, t, 2, (0, 0), "bilinear", s["divisor"])


def test_topk_cross_attn_too_few_tokens_is_an_ort_error(ops_library: Path) -> None:
    s = TOPK_SHAPE
    t = _topk_tensors(1, 3, 16, s["level0"], s["window"], seed=51)
    with pytest.raises(ORT_ERRORS, match="too small"):
        _topk_run(ops_library, t, 2, s["level0"], "window", 25)  # 24 // 25 = 0 windows


def test_topk_cross_attn_requires_num_heads(ops_library: Path) -> None:
    s = TOPK_SHAPE
    t = _topk_tensors(1, 3, 16, s["level0"], s["window"], seed=52)
    feed = {k: t[k].numpy() for k in TOPK_INPUTS}
    model = _model(custom_ops.TOPK_CROSS_ATTN_OP, feed, level0_h=4, level0_w=6)
    with pytest.raises(ORT_ERRORS, match="num_heads"):
        _session(ops_library, model).run(None, feed)


# ------------------------------------------------------------------------------------------------
# faseg.export.custom_ops
# ------------------------------------------------------------------------------------------------


def test_register_custom_ops_names_path_and_build_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nope" / custom_ops.LIBRARY_NAME
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(missing))
    assert custom_ops.ort_custom_ops_library() is None

    class _Options:
        def register_custom_ops_library(self, path: str) -> None:  # pragma: no cover - must not be reached
            raise AssertionError(path)

    with pytest.raises(custom_ops.CustomOpsLibraryNotFoundError) as info:
        custom_ops.register_custom_ops(_Options())
    assert str(missing) in str(info.value)
    assert custom_ops.BUILD_COMMAND in str(info.value)


def test_register_custom_ops_uses_env_library(monkeypatch: pytest.MonkeyPatch, ops_library: Path) -> None:
    monkeypatch.setenv(custom_ops.LIBRARY_ENV, str(ops_library))
    options = ort.SessionOptions()
    custom_ops.register_custom_ops(options)
    shapes = [(2, 2)]
    value, loc, weights = _msda_inputs(1, 1, 2, 2, 1, shapes, seed=6)
    feed = _msda_feed(value, shapes, loc, weights)
    session = ort.InferenceSession(
        _model(custom_ops.MS_DEFORM_ATTN_OP, feed).SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    (out,) = session.run(None, feed)
    assert out.shape == (1, 2, 1, 2)


def test_single_node_model_builds_one_checked_faseg_node() -> None:
    if _IMPORT_ERROR is not None:
        _unavailable(_IMPORT_ERROR)
    tensor = onnx.TensorProto
    inputs = {
        "query": np.zeros((2, 3, 4), np.float16),
        "feat": np.zeros((2, 4, 6, 8), np.float32),
        "index": np.zeros(5, np.int32),
        "mask": np.zeros((1, 7), np.uint8),
    }
    op = custom_ops.TOPK_CROSS_ATTN_OP

    def described(info: onnx.ValueInfoProto) -> tuple[str, int, list[int]]:
        t = info.type.tensor_type
        return info.name, t.elem_type, [d.dim_value for d in t.shape.dim]

    def attributes(model: onnx.ModelProto) -> dict[str, object]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}

    model = custom_ops.single_node_model(op, inputs, [2, 3, 4], np.float16, num_heads=2, divisor=4)
    assert model.ir_version == 10
    opsets = {(o.domain, o.version) for o in model.opset_import}
    assert opsets == {("", 17), (custom_ops.DOMAIN, custom_ops.DOMAIN_VERSION)}
    (node,) = model.graph.node
    assert node.op_type == op and node.domain == custom_ops.DOMAIN
    assert list(node.input) == list(inputs) and list(node.output) == ["output"]
    plugin = {name: value.encode() for name, value in custom_ops.PLUGIN_ATTRIBUTES.items()}
    assert attributes(model) == {**plugin, "num_heads": 2, "divisor": 4}
    assert [described(v) for v in model.graph.input] == [
        ("query", tensor.FLOAT16, [2, 3, 4]),
        ("feat", tensor.FLOAT, [2, 4, 6, 8]),
        ("index", tensor.INT32, [5]),
        ("mask", tensor.UINT8, [1, 7]),
    ]
    assert [described(v) for v in model.graph.output] == [("output", tensor.FLOAT16, [2, 3, 4])]

    bare = custom_ops.single_node_model(op, inputs, [2, 3, 4], plugin_attributes=False, num_heads=2)
    assert attributes(bare) == {"num_heads": 2}
    assert described(bare.graph.output[0]) == ("output", tensor.FLOAT, [2, 3, 4])
    assert attributes(custom_ops.single_node_model(op, inputs, [1], plugin_version="2"))["plugin_version"] == b"2"

    with pytest.raises(ValueError, match="'index' has dtype int64"):
        custom_ops.single_node_model(op, {**inputs, "index": np.zeros(5, np.int64)}, [2, 3, 4])
    with pytest.raises(ValueError, match="'output' has dtype float64"):
        custom_ops.single_node_model(op, inputs, [2, 3, 4], np.float64)
