"""Positional encodings: the 2-D sine PE of DETR / Mask2Former and its point version.

Sine PE (M: transformer_decoder/position_encoding.py:29-52, spec §1.3): normalised cumulative coordinates
1..H and 1..W scaled to (0, 2π], frequencies 10000^(2·⌊i/2⌋/F), sin on even and cos on odd channels
(interleaved), y channels first, then x. It depends only on the map's shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_TEMPERATURE = 10000.0
_SCALE = 2.0 * math.pi
_EPS = 1e-6


def _interleave_sin_cos(x: Tensor) -> Tensor:
    """(..., F) angles -> (..., F): sin of even channels and cos of odd channels, interleaved."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def _frequencies(num_pos_feats: int, device: torch.device) -> Tensor:
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return _TEMPERATURE ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)


def sine_position_encoding(
    batch: int, height: int, width: int, channels: int, device: torch.device | None = None
) -> Tensor:
    """Sine PE of an unpadded (B, ·, H, W) map -> (B, channels, H, W), float32."""
    num_pos_feats = channels // 2
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1] + _EPS) * _SCALE  # (H,)
    x = x / (x[-1] + _EPS) * _SCALE  # (W,)
    dim_t = _frequencies(num_pos_feats, device)
    pos_y = _interleave_sin_cos(y[:, None] / dim_t)  # (H, F)
    pos_x = _interleave_sin_cos(x[:, None] / dim_t)  # (W, F)
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, num_pos_feats), pos_x[None].expand(height, width, num_pos_feats)),
        dim=-1,
    )  # (H, W, C)
    return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, channels, height, width)


def sine_point_encoding(points: Tensor, channels: int) -> Tensor:
    """Sine PE of normalised (x, y) points in [0, 1] -> (..., channels), y channels first.

    Used by the anchor-based positional-query variants (Anchor DETR / DAB-DETR style).
    """
    num_pos_feats = channels // 2
    dim_t = _frequencies(num_pos_feats, points.device)
    pos_x = _interleave_sin_cos(points[..., 0:1] * _SCALE / dim_t)
    pos_y = _interleave_sin_cos(points[..., 1:2] * _SCALE / dim_t)
    return torch.cat((pos_y, pos_x), dim=-1)
