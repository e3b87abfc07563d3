"""The multi-scale deformable-attention encoder of the pixel decoder (Deformable DETR's, as Mask2Former uses it).

Spec §1.3: the projected res5, res4 and res3 maps are flattened into one token sequence (low resolution
first, a learned level embedding added to the key PE) and refined by ``encoder_layers`` post-norm layers of
multi-scale deformable self-attention; the op itself is :func:`faseg.model.ops.ms_deform_attn`.

:class:`MSDeformAttnTransformerEncoderOnly` is the dense encoder of the official code (names follow it:
``transformer.encoder.layers.{n}``); :class:`faseg.model.focus.FocusMSDeformAttnEncoder` subclasses it with
the sparse Focus variant. :mod:`faseg.model.pixel_decoder` picks one of the two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PixelDecoderConfig
from .ops import ms_deform_attn


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR); the op is :func:`faseg.model.ops.ms_deform_attn`."""

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start on a star of n_heads directions, point p at distance p + 1 (Deformable DETR init).
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (Nh, 2)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self, query: Tensor, reference_points: Tensor, value_in: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """query (B, Lq, C); reference_points (B, Lq, L, 2) normalised (x, y); value_in (B, S, C) -> (B, Lq, C)."""
        b, n_q, _ = query.shape
        value = self.value_proj(value_in).view(b, value_in.shape[1], self.n_heads, -1)  # (B, S, Nh, Dh)
        weights = self.attention_weights(query).view(b, n_q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(b, n_q, self.n_heads, self.n_levels, self.n_points)
        # locations = reference point + offset / (W_l, H_l), computed on the flat (B, Lq, Nh·L·P·2) layout the
        # Linear writes, with the reference points and normaliser repeated along it: the same divisions and
        # sums as broadcasting over (Nh, P), but as element-wise ops whose broadcast is over whole rows
        # (ONNX Runtime's CPU Add / Div ran ~10× slower broadcasting pairs of (x, y) inside a 6-D tensor).
        per_level = (self.n_heads, self.n_levels, self.n_points, 2)
        normalizer = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
        normalizer = normalizer[None, :, None, :].expand(per_level).reshape(-1)  # (Nh·L·P·2,)
        reference = reference_points[:, :, None, :, None, :].expand(b, n_q, *per_level).reshape(b, n_q, -1)
        locations = (reference + self.sampling_offsets(query) / normalizer).view(b, n_q, *per_level)
        return self.output_proj(ms_deform_attn(value, spatial_shapes, locations, weights))


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm: deformable self-attention → add → LN → FFN (ReLU) → add → LN (M: msdeformattn.py:123-132)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: list[tuple[int, int]],
        value: Tensor | None = None,
    ) -> Tensor:
        """src, pos (B, Lq, C); reference_points (B, Lq, L, 2). ``value`` (B, S, C): the tokens attended to,
        default ``src`` (dense self-attention); the Focus encoder passes all tokens while ``src`` holds only
        the selected ones (faseg.model.focus)."""
        value = src if value is None else value
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, value, spatial_shapes)))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class MSDeformAttnEncoder(nn.Module):
    """Holds ``layers`` (so names read ``transformer.encoder.layers.{n}``)."""

    def __init__(self, layers: list[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres ((x + 0.5)/W_l, (y + 0.5)/H_l) of every token, shared by every level. -> (S, 2).

    Valid ratios are all 1 because the padding mask is all False (M: msdeformattn.py:63,85,141-154).
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    return torch.cat(points, 0)


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.level_embed = nn.Parameter(torch.empty(n_levels, cfg.conv_dim))
        self.encoder = MSDeformAttnEncoder(
            [
                MSDeformAttnEncoderLayer(
                    cfg.conv_dim,
                    cfg.encoder_ffn_dim,
                    cfg.encoder_dropout,
                    n_levels,
                    cfg.encoder_heads,
                    cfg.encoder_points,
                )
                for _ in range(cfg.encoder_layers)
            ]
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.encoder.layers:
            layer.self_attn.reset_parameters()
        nn.init.normal_(self.level_embed)

    def flatten_inputs(self, srcs: list[Tensor], pos: list[Tensor]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """-> src_flat (B, S, C), pos_flat (B, S, C) with the level embedding added, spatial_shapes."""
        spatial_shapes = [(int(s.shape[2]), int(s.shape[3])) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, C)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, p in enumerate(pos)], 1
        )  # (B, S, C)
        return src_flat, pos_flat, spatial_shapes

    def forward(self, srcs: list[Tensor], pos: list[Tensor]) -> tuple[Tensor, None]:
        """srcs, pos: per level (B, C, H_l, W_l), low resolution first -> (B, S, C) refined tokens, and None
        where the Focus encoder returns its token selection (one calling convention for both)."""
        src_flat, pos_flat, spatial_shapes = self.flatten_inputs(srcs, pos)
        ref = encoder_reference_points(spatial_shapes, src_flat.device)  # (S, 2)
        ref = ref[None, :, None, :].expand(src_flat.shape[0], -1, self.n_levels, 2)  # (B, S, L, 2)
        out = src_flat
        for layer in self.encoder.layers:
            out = layer(out, pos_flat, ref, spatial_shapes)
        return out, None
