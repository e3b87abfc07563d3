"""Multi-scale deformable attention (Deformable DETR), the core of the pixel decoder's encoder.

The reference is pure PyTorch: per level one ``grid_sample`` (bilinear, zero padding outside the map,
``align_corners=False``) at ``2·loc − 1``, then a weighted sum over levels × points. It is the same algorithm
as ``ms_deform_attn_core_pytorch`` in Mask2Former and the CUDA kernel used for official training
(spec §1.3, §6.2). Fused kernels plug in through :func:`faseg.model.ops.register_kernel`.

Layouts follow NVIDIA's ``MultiscaleDeformableAttnPlugin_TRT`` contract:
``value (B, S, Nh, Dh)``, ``sampling_locations (B, Lq, Nh, L, P, 2)`` as (x, y) in [0, 1],
``attention_weights (B, Lq, Nh, L, P)`` (already softmaxed), output ``(B, Lq, Nh·Dh)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor


def level_start_index(spatial_shapes: Sequence[tuple[int, int]]) -> list[int]:
    """Offset of each level's first token in the flattened token axis."""
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total += h * w
    return starts


def ms_deform_attn_reference(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Reference multi-scale deformable attention.

    Args:
        value: (B, S, Nh, Dh) with S = Σ_l H_l·W_l, levels concatenated in ``spatial_shapes`` order.
        spatial_shapes: [(H_l, W_l)] per level.
        sampling_locations: (B, Lq, Nh, L, P, 2), normalised (x, y); (0, 0) is the top-left corner of the
            map and (1, 1) the bottom-right, so pixel centres sit at ((j + 0.5)/W, (i + 0.5)/H).
        attention_weights: (B, Lq, Nh, L, P).

    Returns:
        (B, Lq, Nh·Dh).
    """
    b, s, n_heads, head_dim = value.shape
    _, n_q, _, n_levels, n_points, _ = sampling_locations.shape
    if s != sum(h * w for h, w in spatial_shapes):
        raise ValueError(f"value has {s} tokens but spatial_shapes {list(spatial_shapes)} sum differently")
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, n_q, n_levels, n_points)
    # The weighted sum level by level, (B·Nh, Dh, Lq) each: no (…, Lq, L·P) concatenation of the samples (in an
    # ONNX graph a Concat copying P floats at a time, slower on CPU than the sampling itself).
    level_sums = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * n_heads, head_dim, h, w)  # (B·Nh, Dh, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B·Nh, Lq, P, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B·Nh, Dh, Lq, P)
        level_sums.append((sampled * weights[..., lvl, :]).sum(-1))
    out = level_sums[0]
    for level_sum in level_sums[1:]:
        out = out + level_sum
    return out.view(b, n_heads * head_dim, n_q).transpose(1, 2).contiguous()  # (B, Lq, Nh·Dh)
