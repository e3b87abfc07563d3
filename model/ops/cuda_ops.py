"""PyTorch custom ops ``faseg::ms_deform_attn`` and ``faseg::topk_cross_attention`` (torch.library).

Each op has the PyTorch reference (``faseg.model.ops``) as its implementation on CPU and on every
device without a kernel, and FASeg's CUDA kernel on CUDA tensors (:mod:`faseg.model.ops.cuda_library`:
the prebuilt ``libfaseg_cuda_kernels.so`` or the cpp_extension build). The model never calls these
ops directly: :func:`enable_kernels` registers the CUDA wrappers at the model's one dispatch point,
``faseg.model.ops.register_kernel(op, "cuda", fn)``, and :func:`disable_kernels` restores the
reference.

Schemas (registered by op handle, ``torch.ops.faseg.*``)::

    faseg::ms_deform_attn(Tensor value, SymInt[] spatial_shapes, Tensor sampling_locations,
                          Tensor attention_weights) -> Tensor                    # (N, Lq, M·D)
    faseg::ms_deform_attn_backward(Tensor grad_output, Tensor value, SymInt[] spatial_shapes,
                                   Tensor sampling_locations, Tensor attention_weights)
                                   -> (Tensor, Tensor, Tensor)                   # CUDA only
    faseg::topk_cross_attention(Tensor query, Tensor feat, Tensor pos, Tensor coarse_attn,
                                Tensor in_proj_weight, Tensor? in_proj_bias, Tensor out_proj_weight,
                                Tensor? out_proj_bias, SymInt num_heads, SymInt[] level0_hw, str mode,
                                SymInt divisor) -> Tensor                        # (N, Q, C)

``spatial_shapes`` is flattened to ``[H_0, W_0, H_1, W_1, ...]`` (torch.library has no list of
tuples). Limits of the CUDA kernels: MSDA takes float32, float16 (storage; fp32 math and
accumulation; locations and weights may stay float32 next to float16 values) and float64 (for
gradcheck), other float types run in float32; HRCA computes in float32 (other dtypes are cast) and
supports head dims up to 256.

Autograd: ``ms_deform_attn`` has an analytic backward (the CUDA backward kernel on CUDA, autograd of
the reference elsewhere; float16 gradients are computed in float32). ``topk_cross_attention``
recomputes the reference under autograd in its backward: the top-k selection has no gradient (as in
the reference), so ``coarse_attn`` gets none, and the gradients are those of the reference's
selection (which matches the kernel's except for near-ties, see docs/plugin_contract.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import cuda_library, dispatch
from .cuda_library import KernelsUnavailableError, TopKShape
from .hrca import topk_cross_attention_reference
from .ms_deform_attn import level_start_index, ms_deform_attn_reference

OPS = ("faseg::ms_deform_attn", "faseg::topk_cross_attention")
_MSDA_VALUE_DTYPES = (torch.float32, torch.float16, torch.float64)


def _pairs(flat: Sequence[int]) -> list[tuple[int, int]]:
    if len(flat) % 2:
        raise ValueError(f"spatial_shapes must hold (H, W) pairs flattened, got {len(flat)} values")
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _backend() -> cuda_library.KernelBackend:
    backend = cuda_library.kernel_backend()
    if backend is None:
        raise KernelsUnavailableError(f"FASeg CUDA kernels unavailable: {cuda_library.unavailable_reason()}")
    return backend


# ------------------------------------------------------------------------------------------------
# faseg::ms_deform_attn
# ------------------------------------------------------------------------------------------------

_level_tables: dict[tuple[torch.device, tuple[int, ...]], tuple[Tensor, Tensor]] = {}


def _levels_on(device: torch.device, flat: Sequence[int]) -> tuple[Tensor, Tensor]:
    """int32 (spatial_shapes [L, 2], level_start_index [L]) on ``device``, cached per (device, shapes)."""
    key = (device, tuple(int(v) for v in flat))
    tables = _level_tables.get(key)
    if tables is None:
        pairs = _pairs(key[1])
        starts = level_start_index(pairs)
        tables = (
            torch.tensor(pairs, dtype=torch.int32, device=device).reshape(len(pairs), 2),
            torch.tensor(starts, dtype=torch.int32, device=device),
        )
        if len(_level_tables) > 64:
            _level_tables.clear()
        _level_tables[key] = tables
    return tables


def _check_msda(value: Tensor, flat: Sequence[int], loc: Tensor, attn: Tensor) -> tuple[int, ...]:
    if value.dim() != 4 or loc.dim() != 6 or attn.dim() != 5:
        raise ValueError(
            "ms_deform_attn expects value (N, S, M, D), sampling_locations (N, Lq, M, L, P, 2) and "
            f"attention_weights (N, Lq, M, L, P); got {tuple(value.shape)}, {tuple(loc.shape)}, {tuple(attn.shape)}"
        )
    n, s, m, d = value.shape
    pairs = _pairs(flat)
    _, lq, _, levels, points, _ = loc.shape
    if loc.shape != (n, lq, m, len(pairs), points, 2) or attn.shape != (n, lq, m, len(pairs), points):
        raise ValueError(
            f"ms_deform_attn shapes disagree: value {tuple(value.shape)}, {len(pairs)} levels, "
            f"sampling_locations {tuple(loc.shape)}, attention_weights {tuple(attn.shape)}"
        )
    if any(h < 1 or w < 1 for h, w in pairs) or sum(h * w for h, w in pairs) != s:
        raise ValueError(f"value has {s} tokens but spatial_shapes {pairs} sum differently")
    return n, s, m, d, lq, levels, points


@torch.library.custom_op("faseg::ms_deform_attn", mutates_args=())
def ms_deform_attn_op(
    value: Tensor, spatial_shapes: list[int], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Reference implementation (every device without a kernel). Output (N, Lq, M·D)."""
    return ms_deform_attn_reference(value, _pairs(spatial_shapes), sampling_locations, attention_weights)


@ms_deform_attn_op.register_kernel("cuda")
def _ms_deform_attn_cuda(
    value: Tensor, spatial_shapes: list[int], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    n, _, m, d, lq, _, _ = _check_msda(value, spatial_shapes, sampling_locations, attention_weights)
    compute = value.dtype if value.dtype in _MSDA_VALUE_DTYPES else torch.float32
    # Locations/weights: the value type, except that float16 values may keep float32 coordinates.
    coord = torch.float32 if compute == torch.float16 and sampling_locations.dtype == torch.float32 else compute
    v = value.to(compute).contiguous()
    loc = sampling_locations.to(coord).contiguous()
    attn = attention_weights.to(coord).contiguous()
    shapes, starts = _levels_on(value.device, spatial_shapes)
    out = torch.empty((n, lq, m, d), dtype=compute, device=value.device)
    _backend().msda_forward(v, shapes, starts, loc, attn, out)
    return out.view(n, lq, m * d).to(value.dtype)


@ms_deform_attn_op.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


@torch.library.custom_op("faseg::ms_deform_attn_backward", mutates_args=(), device_types="cuda")
def ms_deform_attn_backward_op(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: list[int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (value, sampling_locations, attention_weights) by the CUDA backward kernel."""
    n, _, m, d, lq, _, _ = _check_msda(value, spatial_shapes, sampling_locations, attention_weights)
    compute = torch.float64 if value.dtype == torch.float64 else torch.float32
    v = value.to(compute).contiguous()
    loc = sampling_locations.to(compute).contiguous()
    attn = attention_weights.to(compute).contiguous()
    grad = grad_output.to(compute).reshape(n, lq, m, d).contiguous()
    shapes, starts = _levels_on(value.device, spatial_shapes)
    grad_value = torch.empty_like(v)
    grad_loc = torch.empty_like(loc)
    grad_attn = torch.empty_like(attn)
    _backend().msda_backward(v, shapes, starts, loc, attn, grad, grad_value, grad_loc, grad_attn)
    return (
        grad_value.to(value.dtype),
        grad_loc.to(sampling_locations.dtype),
        grad_attn.to(attention_weights.dtype),
    )


@ms_deform_attn_backward_op.register_fake
def _ms_deform_attn_backward_fake(grad_output, value, spatial_shapes, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _msda_setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, sampling_locations, attention_weights = inputs
    ctx.spatial_shapes = list(spatial_shapes)
    ctx.save_for_backward(value, sampling_locations, attention_weights)


def _msda_backward(ctx, grad_output: Tensor):
    value, loc, attn = ctx.saved_tensors
    if value.device.type == "cuda":
        grad_value, grad_loc, grad_attn = torch.ops.faseg.ms_deform_attn_backward(
            grad_output, value, ctx.spatial_shapes, loc, attn
        )
    else:  # autograd of the reference
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (value, loc, attn)]
            out = ms_deform_attn_reference(leaves[0], _pairs(ctx.spatial_shapes), leaves[1], leaves[2])
            grad_value, grad_loc, grad_attn = torch.autograd.grad(out, leaves, grad_output, allow_unused=True)
    needs = ctx.needs_input_grad
    return (
        grad_value if needs[0] else None,
        None,
        grad_loc if needs[2] else None,
        grad_attn if needs[3] else None,
    )


ms_deform_attn_op.register_autograd(_msda_backward, setup_context=_msda_setup_context)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """``faseg::ms_deform_attn`` with the signature of :func:`faseg.model.ops.ms_deform_attn_reference`."""
    flat = [v for hw in spatial_shapes for v in hw]
    return torch.ops.faseg.ms_deform_attn(value, flat, sampling_locations, attention_weights)


# ------------------------------------------------------------------------------------------------
# faseg::topk_cross_attention
# ------------------------------------------------------------------------------------------------


def topk_shape(
    query: Tensor, feat: Tensor, coarse_attn: Tensor, num_heads: int, level0_hw: Sequence[int], mode: str, divisor: int
) -> TopKShape:
    """The kernel's shape record for these inputs and attributes (level0_hw may be (0, 0): derive)."""
    if mode not in cuda_library.TOPK_MODES:
        raise ValueError(f"unknown HRCA mode {mode!r}; expected one of {tuple(cuda_library.TOPK_MODES)}")
    if query.dim() != 3 or feat.dim() != 4 or coarse_attn.dim() != 3:
        raise ValueError(
            "topk_cross_attention expects query (N, Q, C), feat (N, C, H3, W3) and coarse_attn (N, Q, S0); "
            f"got {tuple(query.shape)}, {tuple(feat.shape)}, {tuple(coarse_attn.shape)}"
        )
    n, q, c = query.shape
    h0, w0 = level0_hw
    return TopKShape(
        n, q, c, feat.shape[2], feat.shape[3], coarse_attn.shape[2],
        num_heads, divisor, cuda_library.TOPK_MODES[mode], h0, w0,
    )  # fmt: skip


def _check_topk(query, feat, pos, coarse_attn, w_in, b_in, w_out, b_out) -> None:
    n, q, c = query.shape
    expected = {
        "feat": (feat, (n, c, feat.shape[2], feat.shape[3])),
        "pos": (pos, tuple(feat.shape)),
        "coarse_attn": (coarse_attn, (n, q, coarse_attn.shape[2])),
        "in_proj_weight": (w_in, (3 * c, c)),
        "in_proj_bias": (b_in, (3 * c,)),
        "out_proj_weight": (w_out, (c, c)),
        "out_proj_bias": (b_out, (c,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"topk_cross_attention: {name} has shape {tuple(tensor.shape)}, expected {shape}")


@torch.library.custom_op("faseg::topk_cross_attention", mutates_args=())
def topk_cross_attention_op(
    query: Tensor,
    feat: Tensor,
    pos: Tensor,
    coarse_attn: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    level0_hw: list[int],
    mode: str,
    divisor: int,
) -> Tensor:
    """Reference implementation (every device without a kernel). Output (N, Q, C)."""
    return topk_cross_attention_reference(
        query, feat, pos, coarse_attn, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
        num_heads, (level0_hw[0], level0_hw[1]), mode, divisor,
    )  # fmt: skip


@topk_cross_attention_op.register_kernel("cuda")
def _topk_cross_attention_cuda(
    query, feat, pos, coarse_attn, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
    num_heads, level0_hw, mode, divisor,
):  # fmt: skip
    _check_topk(query, feat, pos, coarse_attn, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
    backend = _backend()
    shape = topk_shape(query, feat, coarse_attn, num_heads, level0_hw, mode, divisor)
    error = backend.topk_check(shape)
    if error:
        raise ValueError(f"topk_cross_attention: {error}")

    def f32(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(torch.float32).contiguous()

    out = torch.empty(tuple(query.shape), dtype=torch.float32, device=query.device)
    workspace = torch.empty(backend.topk_workspace_size(shape), dtype=torch.uint8, device=query.device)
    backend.topk_forward(
        shape, f32(query), f32(feat), f32(pos), f32(coarse_attn), f32(in_proj_weight), f32(in_proj_bias),
        f32(out_proj_weight), f32(out_proj_bias), out, workspace,
    )  # fmt: skip
    return out.to(query.dtype)


@topk_cross_attention_op.register_fake
def _topk_cross_attention_fake(query, *args):
    return torch.empty_like(query)


_TOPK_TENSOR_ARGS = 8  # query ... out_proj_bias


def _topk_setup_context(ctx, inputs, output) -> None:
    ctx.attributes = inputs[_TOPK_TENSOR_ARGS:]
    ctx.has_tensor = [t is not None for t in inputs[:_TOPK_TENSOR_ARGS]]
    ctx.save_for_backward(*(t for t in inputs[:_TOPK_TENSOR_ARGS] if t is not None))


def _topk_backward(ctx, grad_output: Tensor):
    saved = iter(ctx.saved_tensors)
    tensors = [next(saved) if present else None for present in ctx.has_tensor]
    num_heads, level0_hw, mode, divisor = ctx.attributes
    needs = ctx.needs_input_grad[:_TOPK_TENSOR_ARGS]
    with torch.enable_grad():
        leaves = [
            t.detach().requires_grad_() if t is not None and need and t.is_floating_point() else t
            for t, need in zip(tensors, needs)
        ]
        out = topk_cross_attention_reference(*leaves, num_heads, (level0_hw[0], level0_hw[1]), mode, divisor)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_output, allow_unused=True) if wanted else ())
    result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result, None, None, None, None)


topk_cross_attention_op.register_autograd(_topk_backward, setup_context=_topk_setup_context)


def topk_cross_attention(
    query: Tensor,
    feat: Tensor,
    pos: Tensor,
    coarse_attn: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    level0_hw: tuple[int, int],
    mode: str = "window",
    divisor: int = 32,
) -> Tensor:
    """``faseg::topk_cross_attention`` with the signature of
    :func:`faseg.model.ops.topk_cross_attention_reference`."""
    return torch.ops.faseg.topk_cross_attention(
        query, feat, pos, coarse_attn, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
        num_heads, list(level0_hw), mode, divisor,
    )  # fmt: skip


def topk_select(
    coarse_attn: Tensor, feat: Tensor, num_heads: int, level0_hw: Sequence[int], mode: str = "window", divisor: int = 32
) -> Tensor:
    """The kernel's selection only: (N, k·window²) int64 flat 1/4-pixel indices (y·W3 + x), for
    comparing selection decisions with :func:`faseg.model.ops.hrca_select` separately from numerics.
    CUDA tensors only. ``feat`` gives C, H3 and W3 (its values are not read)."""
    n, c = feat.shape[:2]
    shape = TopKShape(
        n, coarse_attn.shape[1], c, feat.shape[2], feat.shape[3], coarse_attn.shape[2],
        num_heads, divisor, cuda_library.TOPK_MODES[mode], level0_hw[0], level0_hw[1],
    )  # fmt: skip
    backend = _backend()
    error = backend.topk_check(shape)
    if error:
        raise ValueError(f"topk_select: {error}")
    pixels = torch.empty((n, backend.topk_num_memory(shape)), dtype=torch.int32, device=coarse_attn.device)
    workspace = torch.empty(backend.topk_workspace_size(shape), dtype=torch.uint8, device=coarse_attn.device)
    backend.topk_select(shape, coarse_attn.to(torch.float32).contiguous(), pixels, workspace)
    return pixels.long()


# ------------------------------------------------------------------------------------------------
# the model's dispatch point
# ------------------------------------------------------------------------------------------------


def kernels_available() -> bool:
    """True when a CUDA device and the kernels (prebuilt library or built extension) are present."""
    return torch.cuda.is_available() and cuda_library.kernel_backend() is not None


def enable_kernels(*, build: bool = False) -> bool:
    """Make :func:`faseg.model.ops.ms_deform_attn` / ``topk_cross_attention`` use the CUDA kernels for
    CUDA tensors. Returns False (and changes nothing) when no GPU or no kernel build is available;
    ``build=True`` compiles the PyTorch extension if needed (minutes, needs nvcc)."""
    if not torch.cuda.is_available() or cuda_library.kernel_backend(build=build) is None:
        return False
    dispatch.register_kernel("ms_deform_attn", "cuda", ms_deform_attn)
    dispatch.register_kernel("topk_cross_attention", "cuda", topk_cross_attention)
    return True


def disable_kernels() -> None:
    """Restore the PyTorch references on CUDA."""
    dispatch.register_kernel("ms_deform_attn", "cuda", None)
    dispatch.register_kernel("topk_cross_attention", "cuda", None)


def kernels_enabled() -> bool:
    return (
        dispatch.registered_kernel("ms_deform_attn", "cuda") is ms_deform_attn
        and dispatch.registered_kernel("topk_cross_attention", "cuda") is topk_cross_attention
    )


def unavailable_reason() -> str:
    """Why :func:`enable_kernels` would return False (empty when it would not)."""
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__})"
    if cuda_library.kernel_backend() is None:
        return cuda_library.unavailable_reason()
    return ""


__all__ = [
    "OPS",
    "disable_kernels",
    "enable_kernels",
    "kernels_available",
    "kernels_enabled",
    "ms_deform_attn",
    "ms_deform_attn_backward_op",
    "ms_deform_attn_op",
    "topk_cross_attention",
    "topk_cross_attention_op",
    "topk_select",
    "topk_shape",
    "unavailable_reason",
]
