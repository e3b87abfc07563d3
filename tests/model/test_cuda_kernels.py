"""FASeg's CUDA kernels (export/plugins/cuda) through the PyTorch ops of faseg.model.ops.cuda_ops.

Every GPU test runs once per kernel backend (``ctypes``: the prebuilt ``libfaseg_cuda_kernels.so`` from
``export/plugins/build_cuda.sh``; ``extension``: the torch.utils.cpp_extension build) and compares with
the PyTorch reference in faseg.model.ops:

- MSDA forward, fp32: max error ≤ 1e-5 relative to the output's magnitude, including samples partly or
  fully outside the map, exact borders, and non-finite locations (which contribute 0);
- MSDA forward, fp16 storage (and fp16 values with fp32 locations): ≤ 1e-2 relative;
- MSDA backward: against autograd of the reference (fp32) and ``gradcheck`` in fp64 on small shapes, for
  both backward kernels (head dim a power of two ≤ 32, and any other head dim);
- HRCA: output ≤ 1e-5 relative, both modes, derived and explicit 1/32 map, head dims 16/32/48; selection
  decisions compared separately (set equality with ``hrca_select``), including exact ties straddling the
  cut and NaN scores; bad geometry is an error;
- the model's dispatch point (``enable_kernels``), and a small model end to end with vs without kernels.

Without a CUDA device or a kernel build these tests skip with the reason, unless
``FASEG_REQUIRE_CUDA_KERNELS=1`` (a GPU session sets it): then they fail (the ``extension`` backend still
skips where nvcc is missing). The CPU tests at the top run
everywhere: the custom ops fall back to the reference, their schemas/fake/autograd registrations pass
``torch.library.opcheck``, and gradients flow.
"""

from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
from faseg.model import ops as model_ops
from faseg.model.ops import cuda_library, cuda_ops

REQUIRED = os.environ.get("FASEG_REQUIRE_CUDA_KERNELS") == "1"
CUDA = torch.cuda.is_available()
FP32_REL = 1e-5
FP16_REL = 1e-2


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (FASEG_REQUIRE_CUDA_KERNELS=1)", pytrace=False)
    pytest.skip(reason)


def _rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    scale = max(want.abs().max().item(), 1.0)
    return (got - want).abs().max().item() / scale


# ------------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------------


def msda_inputs(batch, heads, head_dim, queries, points, shapes, *, seed=0, dtype=torch.float32, special=True):
    """value, locations spread over [-0.3, 1.3] (plus exact borders and pixel centres with ``special``),
    weights normalised over levels x points."""
    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(batch, s, heads, head_dim, generator=g, dtype=torch.float64)
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    for lvl, (h, w) in enumerate(shapes if special else []):
        points_xy = [(0.0, 0.0), (1.0, 1.0), (0.5 / w, 0.5 / h), (1 - 0.5 / w, 1 - 0.5 / h), (-0.5 / w, 0.5),
                     (0.5, 1 + 0.5 / h), (-2.0, 3.0)]  # fmt: skip
        for i, xy in enumerate(points_xy):
            q, p = divmod(i, points)
            if q < queries:
                loc[:, q, :, lvl, p] = torch.tensor(xy, dtype=torch.float64)
    weights = torch.rand(batch, queries, heads, levels, points, generator=g, dtype=torch.float64)
    weights = weights / weights.sum(dim=(-1, -2), keepdim=True)
    return value.to(dtype), loc.to(dtype), weights.to(dtype)


def topk_inputs(batch, queries, channels, level0_hw, window, *, seed=0, dyadic=False):
    """query, feat, pos, coarse_attn and nn.MultiheadAttention-like weights (fp32).

    coarse_attn is a softmax of random logits, or with ``dyadic`` multiples of 2^-10 below 2^-4: then
    every score, upsampled value (window a power of two) and tie is exact in fp32 and fp64 alike, so
    the reference's fp32 ranking equals the contract's fp64 ranking. Bilinear mode needs that: rows and
    columns at the map borders interpolate the same 1/32 values (ties in real arithmetic)."""
    g = torch.Generator().manual_seed(seed)
    h0, w0 = level0_hw
    h3, w3 = h0 * window, w0 * window
    query = torch.randn(batch, queries, channels, generator=g)
    feat = torch.randn(batch, channels, h3, w3, generator=g)
    pos = torch.randn(batch, channels, h3, w3, generator=g)
    coarse = torch.randn(batch, queries, h0 * w0, generator=g).mul(3).softmax(-1)
    if dyadic:
        coarse = torch.randint(0, 64, coarse.shape, generator=g).float() / 1024
    bound = 1 / math.sqrt(channels)
    w_in = (torch.rand(3 * channels, channels, generator=g) * 2 - 1) * bound
    b_in = torch.randn(3 * channels, generator=g) * 0.1
    w_out = (torch.rand(channels, channels, generator=g) * 2 - 1) * bound
    b_out = torch.randn(channels, generator=g) * 0.1
    return query, feat, pos, coarse, w_in, b_in, w_out, b_out


MSDA_CASES = {
    # batch, heads, head_dim, queries, points, shapes
    "mask2former-like": (2, 8, 32, 40, 4, [(8, 12), (4, 6), (2, 3)]),
    "4-levels-odd-dims": (2, 4, 12, 9, 3, [(3, 5), (6, 4), (1, 1), (2, 7)]),
    "head-dim-64": (1, 2, 64, 7, 2, [(5, 3), (2, 2)]),
    "head-dim-1": (2, 3, 1, 5, 4, [(4, 4)]),
}


# ------------------------------------------------------------------------------------------------
# CPU: the custom ops fall back to the reference (runs everywhere)
# ------------------------------------------------------------------------------------------------


def test_ms_deform_attn_op_is_the_reference_on_cpu() -> None:
    shapes = [(4, 6), (2, 3)]
    value, loc, weights = msda_inputs(2, 2, 4, 5, 3, shapes, seed=1)
    got = cuda_ops.ms_deform_attn(value, shapes, loc, weights)
    assert torch.equal(got, model_ops.ms_deform_attn_reference(value, shapes, loc, weights))


def test_topk_cross_attention_op_is_the_reference_on_cpu() -> None:
    args = topk_inputs(2, 5, 16, (2, 4), 4, seed=2)
    got = cuda_ops.topk_cross_attention(*args, 4, (2, 4), "window", 4)
    want = model_ops.topk_cross_attention_reference(*args, 4, (2, 4), "window", 4)
    assert torch.equal(got, want)


def test_ops_pass_opcheck_on_cpu() -> None:
    shapes = [(3, 4), (2, 2)]
    value, loc, weights = msda_inputs(1, 2, 4, 3, 2, shapes, seed=3)
    value.requires_grad_()
    torch.library.opcheck(torch.ops.faseg.ms_deform_attn.default, (value, [3, 4, 2, 2], loc, weights))
    query, feat, pos, coarse, w_in, b_in, w_out, b_out = topk_inputs(1, 3, 8, (2, 2), 2, seed=3)
    query.requires_grad_()
    torch.library.opcheck(
        torch.ops.faseg.topk_cross_attention.default,
        (query, feat, pos, coarse, w_in, b_in, w_out, b_out, 2, [2, 2], "bilinear", 2),
    )


def test_ms_deform_attn_op_gradcheck_on_cpu() -> None:
    shapes = [(3, 4), (2, 2)]
    value, loc, weights = msda_inputs(1, 2, 3, 3, 2, shapes, seed=4, dtype=torch.float64)
    # Random locations (no exact pixel centres: the bilinear weights have kinks there), partly outside.
    loc = torch.rand(loc.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 1.2 - 0.1
    inputs = tuple(t.requires_grad_() for t in (value, loc, weights))
    assert torch.autograd.gradcheck(lambda v, l, a: cuda_ops.ms_deform_attn(v, shapes, l, a), inputs)


def test_topk_cross_attention_op_gradients_on_cpu() -> None:
    args = [t.double() for t in topk_inputs(2, 4, 8, (2, 2), 2, seed=5)]
    attrs = (2, (2, 2), "window", 2)
    leaves_op = [t.clone().requires_grad_() for t in args]
    leaves_ref = [t.clone().requires_grad_() for t in args]
    cuda_ops.topk_cross_attention(*leaves_op, *attrs).square().sum().backward()
    model_ops.topk_cross_attention_reference(*leaves_ref, *attrs).square().sum().backward()
    for name, a, b in zip(["query", "feat", "pos", "coarse"], leaves_op, leaves_ref):
        assert (a.grad is None) == (b.grad is None), name
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_enable_kernels_without_a_gpu_changes_nothing() -> None:
    if CUDA:
        pytest.skip("a CUDA device is present")
    assert cuda_ops.enable_kernels() is False
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is None
    assert "no CUDA device" in cuda_ops.unavailable_reason()


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["ctypes", "extension"])
def backend(request):
    """One kernel backend, forced for the duration of the test."""
    if not CUDA:
        _unavailable(f"no CUDA device (torch {torch.__version__})")
    try:
        if request.param == "ctypes":
            chosen = cuda_library.load_library()
        else:
            if shutil.which("nvcc") is None and not any(cuda_library.EXTENSION_BUILD_DIR.glob("*.so")):
                # Optional even under FASEG_REQUIRE_CUDA_KERNELS: the prebuilt library covers the kernels.
                pytest.skip("nvcc not found: the PyTorch extension cannot be built")
            chosen = cuda_library.build_extension()
    except cuda_library.KernelsUnavailableError as exc:
        _unavailable(str(exc))
    previous = cuda_library.set_backend(chosen)
    yield chosen
    cuda_library.set_backend(previous)


def _cuda(*tensors):
    return [None if t is None else t.cuda() for t in tensors]


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(MSDA_CASES))
def test_msda_forward_fp32(backend, case) -> None:
    batch, heads, head_dim, queries, points, shapes = MSDA_CASES[case]
    value, loc, weights = msda_inputs(batch, heads, head_dim, queries, points, shapes, seed=10)
    want = model_ops.ms_deform_attn_reference(value, shapes, loc, weights)
    got = cuda_ops.ms_deform_attn(*_cuda(value), shapes, *_cuda(loc, weights))
    assert got.shape == want.shape and got.dtype == torch.float32
    assert _rel_error(got, want) <= FP32_REL


@pytest.mark.gpu
def test_msda_forward_all_outside_is_zero(backend) -> None:
    shapes = [(3, 4), (2, 2)]
    value, loc, weights = msda_inputs(1, 2, 4, 3, 2, shapes, seed=11)
    loc[:] = torch.tensor([-0.6, 1.7])
    got = cuda_ops.ms_deform_attn(*_cuda(value), shapes, *_cuda(loc, weights))
    assert torch.count_nonzero(got) == 0


@pytest.mark.gpu
def test_msda_forward_non_finite_locations_contribute_zero(backend) -> None:
    shapes = [(6, 5), (3, 3)]
    value, loc, weights = msda_inputs(2, 2, 8, 6, 3, shapes, seed=12)
    bad = [(0, 1, 0, 0, 1, 0, float("nan")), (1, 2, 1, 1, 0, 1, float("inf")), (0, 3, 1, 0, 2, 0, float("-inf"))]
    clean_loc, clean_w = loc.clone(), weights.clone()
    for n, q, m, lvl, p, xy, v in bad:
        loc[n, q, m, lvl, p, xy] = v
        clean_loc[n, q, m, lvl, p] = 0.5
        clean_w[n, q, m, lvl, p] = 0.0
    want = model_ops.ms_deform_attn_reference(value, shapes, clean_loc, clean_w)
    got = cuda_ops.ms_deform_attn(*_cuda(value), shapes, *_cuda(loc, weights))
    assert torch.isfinite(got).all()
    assert _rel_error(got, want) <= FP32_REL


@pytest.mark.gpu
@pytest.mark.parametrize("coord_dtype", [torch.float16, torch.float32], ids=["fp16-locations", "fp32-locations"])
def test_msda_forward_fp16(backend, coord_dtype) -> None:
    batch, heads, head_dim, queries, points, shapes = MSDA_CASES["mask2former-like"]
    value, loc, weights = msda_inputs(batch, heads, head_dim, queries, points, shapes, seed=13)
    value16, loc_c, weights_c = value.half(), loc.to(coord_dtype), weights.to(coord_dtype)
    # The reference sees exactly the rounded inputs, computed in fp32.
    want = model_ops.ms_deform_attn_reference(value16.float(), shapes, loc_c.float(), weights_c.float())
    got = cuda_ops.ms_deform_attn(*_cuda(value16), shapes, *_cuda(loc_c, weights_c))
    assert got.dtype == torch.float16
    assert _rel_error(got, want) <= FP16_REL


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["mask2former-like", "4-levels-odd-dims", "head-dim-64"])
def test_msda_backward_matches_reference_autograd(backend, case) -> None:
    batch, heads, head_dim, queries, points, shapes = MSDA_CASES[case]
    # No exact pixel centres: the location gradient is one-sided there, and the reference's grid
    # arithmetic may land on the other side.
    value, loc, weights = msda_inputs(batch, heads, head_dim, queries, points, shapes, seed=14, special=False)
    grad_out = torch.randn(batch, queries, heads * head_dim, generator=torch.Generator().manual_seed(15))
    ref_leaves = [t.clone().requires_grad_() for t in (value, loc, weights)]
    model_ops.ms_deform_attn_reference(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2]).backward(grad_out)
    leaves = [t.cuda().requires_grad_() for t in (value, loc, weights)]
    cuda_ops.ms_deform_attn(leaves[0], shapes, leaves[1], leaves[2]).backward(grad_out.cuda())
    for name, got, want in zip(["value", "sampling_locations", "attention_weights"], leaves, ref_leaves):
        assert _rel_error(got.grad, want.grad) <= 1e-4, name


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [4, 3], ids=["segment-kernel", "sample-kernel"])
def test_msda_gradcheck_fp64(backend, head_dim) -> None:
    shapes = [(4, 5), (2, 3)]
    value, loc, weights = msda_inputs(1, 2, head_dim, 3, 2, shapes, seed=16, dtype=torch.float64)
    # Keep samples off the exact borders (kinks of the bilinear weights) but partly outside the map.
    loc = torch.rand(loc.shape, generator=torch.Generator().manual_seed(17), dtype=torch.float64) * 1.2 - 0.1
    inputs = tuple(t.cuda().requires_grad_() for t in (value, loc, weights))
    assert torch.autograd.gradcheck(lambda v, l, a: cuda_ops.ms_deform_attn(v, shapes, l, a), inputs, eps=1e-6)


TOPK_CASES = {
    # batch, queries, channels, heads, level0, window, divisor, mode
    "window-dh16": (2, 10, 64, 4, (4, 6), 4, 4, "window"),
    "window-dh48": (2, 7, 96, 2, (3, 3), 2, 2, "window"),
    "window-dh32-fasegish": (1, 20, 256, 8, (4, 4), 8, 4, "window"),
    "bilinear-dh16": (2, 10, 64, 4, (4, 6), 4, 4, "bilinear"),
    "bilinear-dh32": (1, 5, 64, 2, (3, 5), 2, 3, "bilinear"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(TOPK_CASES))
def test_topk_forward_fp32(backend, case) -> None:
    batch, queries, channels, heads, level0, window, divisor, mode = TOPK_CASES[case]
    args = topk_inputs(batch, queries, channels, level0, window, seed=20, dyadic=mode == "bilinear")
    want = model_ops.topk_cross_attention_reference(*args, heads, level0, mode, divisor)
    got = cuda_ops.topk_cross_attention(*_cuda(*args), heads, level0, mode, divisor)
    assert got.shape == want.shape
    assert _rel_error(got, want) <= FP32_REL


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["window", "bilinear"])
def test_topk_derived_level0_equals_explicit(backend, mode) -> None:
    level0, window, heads, divisor = (4, 6), 4, 4, 4
    args = topk_inputs(2, 10, 64, level0, window, seed=21, dyadic=mode == "bilinear")
    query, feat, pos, coarse, w_in, b_in, w_out, b_out = _cuda(*args)
    want = model_ops.topk_cross_attention_reference(
        *[t.cpu() for t in (query, feat, pos, coarse, w_in, b_in, w_out, b_out)], heads, level0, mode, divisor
    )
    shape = cuda_ops.topk_shape(query, feat, coarse, heads, (0, 0), mode, divisor)
    assert backend.topk_check(shape) == ""
    out = torch.empty_like(query)
    workspace = torch.empty(backend.topk_workspace_size(shape), dtype=torch.uint8, device="cuda")
    backend.topk_forward(shape, query, feat, pos, coarse, w_in, b_in, w_out, b_out, out, workspace)
    assert _rel_error(out, want) <= FP32_REL


def _selected_pixels(coarse, feat, level0, mode, divisor) -> list[set[int]]:
    """The reference selection as sets of flat 1/4 pixels."""
    _, _, idx = model_ops.hrca_select(coarse, feat, feat, level0, mode, divisor)
    if mode == "bilinear":
        return [set(row.tolist()) for row in idx]
    h0, w0 = level0
    window = feat.shape[2] // h0
    w3 = feat.shape[3]
    out = []
    for row in idx:
        pixels = set()
        for t in row.tolist():
            r, c = divmod(t, w0)
            pixels |= {(r * window + dy) * w3 + c * window + dx for dy in range(window) for dx in range(window)}
        out.append(pixels)
    return out


def _tied_coarse(batch, queries, level0, *, nan: bool = False) -> torch.Tensor:
    """Dyadic scores (exact in fp32 and fp64) with a tie group straddling the cut of k = S0 // 4."""
    s0 = level0[0] * level0[1]
    k = s0 // 4
    scores = torch.full((batch, s0), 0.25)
    scores[:, : k - 1] = 4.0  # k - 1 clear winners at the front
    tied = list(range(s0 - 1, s0 - 1 - 3 * 2, -2))  # three equal scores at high indices
    scores[:, tied] = 2.0  # one of them enters the set: the lowest index
    if nan:
        scores[0, s0 // 2] = float("nan")  # ranks before every number
    return (scores / queries).unsqueeze(1).expand(batch, queries, s0).contiguous()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["window", "bilinear"])
@pytest.mark.parametrize("nan", [False, True], ids=["ties", "ties-and-nan"])
def test_topk_selection_matches_reference(backend, mode, nan) -> None:
    level0, window, divisor = (4, 6), 4, 4
    coarse = _tied_coarse(2, 4, level0, nan=nan)
    feat = torch.zeros(2, 8, level0[0] * window, level0[1] * window)
    want = _selected_pixels(coarse, feat, level0, mode, divisor)
    got = cuda_ops.topk_select(coarse.cuda(), feat.cuda(), 2, level0, mode, divisor)
    assert [set(row.tolist()) for row in got.cpu()] == want


@pytest.mark.gpu
def test_topk_forward_with_ties(backend) -> None:
    level0, window, heads, divisor = (4, 6), 4, 4, 4
    query, feat, pos, _, w_in, b_in, w_out, b_out = topk_inputs(2, 4, 32, level0, window, seed=22)
    coarse = _tied_coarse(2, 4, level0)
    args = (query, feat, pos, coarse, w_in, b_in, w_out, b_out)
    for mode in ("window", "bilinear"):
        want = model_ops.topk_cross_attention_reference(*args, heads, level0, mode, divisor)
        got = cuda_ops.topk_cross_attention(*_cuda(*args), heads, level0, mode, divisor)
        assert _rel_error(got, want) <= FP32_REL, mode


@pytest.mark.gpu
def test_topk_fp16_inputs_run_in_fp32(backend) -> None:
    batch, queries, channels, heads, level0, window, divisor, mode = TOPK_CASES["window-dh16"]
    args = [t.half() for t in topk_inputs(batch, queries, channels, level0, window, seed=23)]
    want = model_ops.topk_cross_attention_reference(*[t.float() for t in args], heads, level0, mode, divisor)
    got = cuda_ops.topk_cross_attention(*_cuda(*args), heads, level0, mode, divisor)
    assert got.dtype == torch.float16
    assert _rel_error(got, want) <= FP16_REL


@pytest.mark.gpu
def test_topk_rejects_bad_geometry(backend) -> None:
    args = _cuda(*topk_inputs(1, 3, 16, (2, 3), 4, seed=24))
    args[1] = args[1][..., :-1].contiguous()  # W3 no longer a multiple of the 1/32 map
    args[2] = args[2][..., :-1].contiguous()
    with pytest.raises(ValueError, match="multiple"):
        cuda_ops.topk_cross_attention(*args, 2, (2, 3), "window", 2)


@pytest.mark.gpu
def test_topk_workspace_upper_bound_covers_exact(backend) -> None:
    for level0, window, divisor, mode in [((4, 6), 4, 4, 0), ((16, 16), 8, 32, 0), ((16, 32), 8, 32, 1)]:
        h3, w3 = level0[0] * window, level0[1] * window
        exact = cuda_library.TopKShape(8, 100, 256, h3, w3, level0[0] * level0[1], 8, divisor, mode, *level0)
        assert backend.topk_check(exact) == ""
        assert backend.topk_workspace_size(exact._replace(level0_h=0, level0_w=0), True) >= backend.topk_workspace_size(
            exact
        )


# ------------------------------------------------------------------------------------------------
# the model's dispatch point
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def kernels_enabled(backend):
    assert cuda_ops.enable_kernels()
    yield backend
    cuda_ops.disable_kernels()


@pytest.mark.gpu
def test_enable_kernels_routes_the_model_ops(kernels_enabled) -> None:
    assert cuda_ops.kernels_enabled()
    shapes = [(8, 12), (4, 6)]
    value, loc, weights = msda_inputs(1, 4, 8, 10, 4, shapes, seed=30)
    got = model_ops.ms_deform_attn(*_cuda(value), shapes, *_cuda(loc, weights))
    assert _rel_error(got, model_ops.ms_deform_attn_reference(value, shapes, loc, weights)) <= FP32_REL
    cuda_ops.disable_kernels()
    assert model_ops.registered_kernel("ms_deform_attn", "cuda") is None


@pytest.mark.gpu
def test_model_end_to_end_with_and_without_kernels(kernels_enabled) -> None:
    """faseg_tiny on CUDA. With only the MSDA kernel the outputs match the reference run; with both kernels
    the run must work (HRCA's selection may differ from the reference's fp32 ranking on the near-ties of a
    randomly initialised model, so its outputs are not compared element-wise)."""
    from faseg.model.faseg import build_model
    from faseg.model.presets import get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("faseg_tiny")).cuda().eval()
    images = torch.rand(2, 3, 256, 256, device="cuda") * 255
    with torch.no_grad():
        both = model(images)
        model_ops.register_kernel("topk_cross_attention", "cuda", None)
        msda_only = model(images)
        cuda_ops.disable_kernels()
        reference = model(images)
    assert both.pred_logits.shape == reference.pred_logits.shape
    assert torch.isfinite(both.pred_logits).all() and torch.isfinite(both.pred_masks).all()
    assert _rel_error(msda_only.pred_logits, reference.pred_logits) <= 1e-3
    assert _rel_error(msda_only.pred_masks, reference.pred_masks) <= 1e-3
