"""The model's single dispatch point for its two attention ops.

The model calls :func:`ms_deform_attn` and :func:`topk_cross_attention`; they run the pure-PyTorch reference
unless a fused implementation was registered for the tensors' device type with :func:`register_kernel`
(:func:`faseg.model.ops.kernels.select_kernels` does that for FASeg's CUDA kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from .hrca import topk_cross_attention_reference
from .ms_deform_attn import ms_deform_attn_reference

OP_NAMES = ("ms_deform_attn", "topk_cross_attention")
_KERNELS: dict[tuple[str, str], Callable[..., Tensor]] = {}


def register_kernel(op: str, device_type: str, fn: Callable[..., Tensor] | None) -> None:
    """Use ``fn`` for ``op`` on tensors of ``device_type`` ("cpu", "cuda"); ``None`` restores the reference.

    ``fn`` takes exactly the arguments of the reference function of that op.
    """
    if op not in OP_NAMES:
        raise ValueError(f"unknown op {op!r}; expected one of {OP_NAMES}")
    if fn is None:
        _KERNELS.pop((op, device_type), None)
    else:
        _KERNELS[(op, device_type)] = fn


def registered_kernel(op: str, device_type: str) -> Callable[..., Tensor] | None:
    return _KERNELS.get((op, device_type))


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention; see :func:`ms_deform_attn_reference` for shapes."""
    fn = _KERNELS.get(("ms_deform_attn", value.device.type), ms_deform_attn_reference)
    return fn(value, spatial_shapes, sampling_locations, attention_weights)


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
    """HRCA top-k cross-attention; see :func:`topk_cross_attention_reference` for shapes."""
    fn = _KERNELS.get(("topk_cross_attention", query.device.type), topk_cross_attention_reference)
    return fn(
        query,
        feat,
        pos,
        coarse_attn,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        level0_hw,
        mode,
        divisor,
    )
