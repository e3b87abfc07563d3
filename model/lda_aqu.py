"""LDA-AQU: upsampling as local deformable attention guided by the query (Du et al., ACM MM 2024).

"Adaptive Query-guided Upsampling via Local Deformable Attention". Every output pixel is a query; it attends
to a ``k_u × k_u`` neighbourhood of the low-resolution map whose positions are shifted by offsets predicted
from the query itself, and mixes the sampled values with softmax(q·k) weights. Our own implementation of the
design read from the authors' ``FPN_LAU`` neck (duzw9311/LDA-AQU, ``mmdet/models/necks/fpn_lau.py``); the
knobs and their defaults are the official config's (``configs/lda_aqu/fasterrcnn_r50_lau.py``):
``k_u = 3``, ``k_e = 3``, ``range_factor = 11``, ``reduction_factor = 4``, ``n_groups = 2``, 1 head,
relative position bias on the keys.

Same as the official module:

* a channel LayerNorm on the input feeds the query and key 1×1 projections (``C → C / reduction``, no bias);
  the *values* are the raw input features, and there is no output projection;
* the query map is computed at the input resolution and bilinearly upsampled to the output size;
* offsets: per group of query channels, depthwise 3×3 conv → channel LayerNorm → GELU → ``k_e × k_e`` conv to
  ``2·k_u²`` channels, then ``offset_range · tanh(·)``; the last conv starts at zero, so training starts from
  the fixed neighbourhood;
* the keys and values of a group are sampled bilinearly at that group's positions; attention is per head
  over the ``k_u²`` samples, with a learned bias ``(heads, k_u², d)`` added to the sampled keys.

Deliberate differences (so that the module degenerates to the decoder's own upsampler):

* coordinates follow ``align_corners=False`` like every other resize in the pixel decoder: output pixel
  ``(i, j)`` sits at input position ``((j + 0.5)·W/W_out − 0.5, (i + 0.5)·H/H_out − 0.5)``, and the query map
  is upsampled with ``align_corners=False`` (the official code uses ``align_corners=True`` in both places);
* samples outside the map take the nearest border value (``padding_mode="border"``, official: zeros).

Hence, with zero offsets and uniform attention, the output is the mean of the bilinearly upsampled map over
the ``k_u × k_u`` output-pixel neighbourhood (edge-replicated), and for ``k_u = 1`` it is exactly
``F.interpolate(x, size, mode="bilinear", align_corners=False)``. Offsets and the neighbourhood grid are in
*output*-pixel units (as in the official code: neighbours of a 2× upsampling sit half an input pixel apart).

Everything is standard ONNX (GridSample, opset ≥ 16; Einsum; Erf for GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LDAAQUConfig


def neighbourhood_offsets(kernel_size: int, device: torch.device | None = None) -> Tensor:
    """The fixed ``k × k`` grid around each output pixel, row-major, as (dx, dy). -> (k², 2)."""
    r = (kernel_size - 1) / 2
    steps = torch.arange(kernel_size, dtype=torch.float32, device=device) - r
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((dx.reshape(-1), dy.reshape(-1)), -1)


def lda_aqu_upsample(
    value: Tensor,
    key: Tensor,
    query: Tensor,
    offsets: Tensor,
    kernel_size: int,
    num_heads: int,
    key_bias: Tensor | None = None,
) -> Tensor:
    """Local deformable attention upsampling (the math of :class:`LDAAQU`).

    Args:
        value: (B, C, H, W) the map to upsample.
        key: (B, Ck, H, W) keys at the input resolution.
        query: (B, Ck, H_out, W_out) queries at the output resolution.
        offsets: (B, G, k², 2, H_out, W_out) extra (dx, dy) per group and neighbour, in output pixels.
            Group g samples key and value channels [g·Ck/G, (g+1)·Ck/G) and [g·C/G, (g+1)·C/G).
        kernel_size: k, the neighbourhood is k × k output pixels.
        num_heads: attention heads; head h uses key/query channels [h·Ck/nh, …) and value channels
            [h·C/nh, …).
        key_bias: optional (nh, Ck/nh, k²) relative-position bias added to the sampled keys.

    Returns:
        (B, C, H_out, W_out).
    """
    b, c, h, w = value.shape
    ck = key.shape[1]
    h_out, w_out = query.shape[-2:]
    groups, k2 = offsets.shape[1], offsets.shape[2]
    if k2 != kernel_size * kernel_size:
        raise ValueError(f"offsets have {k2} neighbours, expected kernel_size² = {kernel_size**2}")
    if c % groups or ck % groups or c % num_heads or ck % num_heads:
        raise ValueError(f"channels (value {c}, key {ck}) must be divisible by groups {groups} and heads {num_heads}")

    # Sampling positions in output-pixel index units, then normalised for grid_sample (align_corners=False):
    # output position p maps to input p_in = (p + 0.5)·H/H_out − 0.5, i.e. grid = 2(p + 0.5)/H_out − 1.
    base = neighbourhood_offsets(kernel_size, value.device).to(value.dtype)  # (k², 2)
    xs = torch.arange(w_out, dtype=value.dtype, device=value.device)
    ys = torch.arange(h_out, dtype=value.dtype, device=value.device)
    pos_x = xs.view(1, 1, 1, 1, w_out) + base[:, 0].view(1, 1, k2, 1, 1) + offsets[:, :, :, 0]  # (B, G, k², Ho, Wo)
    pos_y = ys.view(1, 1, 1, h_out, 1) + base[:, 1].view(1, 1, k2, 1, 1) + offsets[:, :, :, 1]  # (B, G, k², Ho, Wo)
    grid = torch.stack(((2.0 * pos_x + 1.0) / w_out - 1.0, (2.0 * pos_y + 1.0) / h_out - 1.0), -1)
    grid = grid.reshape(b * groups, k2 * h_out, w_out, 2)  # (B·G, k²·Ho, Wo, 2)

    # Keys and values of one group are sampled together at that group's positions.
    kv = torch.cat((key.reshape(b, groups, ck // groups, h, w), value.reshape(b, groups, c // groups, h, w)), 2)
    kv = kv.reshape(b * groups, (ck + c) // groups, h, w)  # (B·G, (Ck+C)/G, H, W)
    sampled = F.grid_sample(kv, grid, mode="bilinear", padding_mode="border", align_corners=False)
    sampled = sampled.view(b, groups, (ck + c) // groups, k2, h_out, w_out)  # (B, G, (Ck+C)/G, k², Ho, Wo)
    k_s, v_s = sampled.split([ck // groups, c // groups], dim=2)

    head_dim = ck // num_heads
    k_s = k_s.reshape(b, num_heads, head_dim, k2, h_out, w_out)  # (B, nh, dk, k², Ho, Wo)
    if key_bias is not None:
        k_s = k_s + key_bias.view(1, num_heads, head_dim, k2, 1, 1)
    q = query.reshape(b, num_heads, head_dim, h_out, w_out)  # (B, nh, dk, Ho, Wo)
    logits = torch.einsum("bhdnyx,bhdyx->bhnyx", k_s, q) * head_dim**-0.5  # (B, nh, k², Ho, Wo)
    attn = logits.softmax(dim=2)
    v_s = v_s.reshape(b, num_heads, c // num_heads, k2, h_out, w_out)  # (B, nh, C/nh, k², Ho, Wo)
    out = torch.einsum("bhnyx,bhcnyx->bhcyx", attn, v_s)  # (B, nh, C/nh, Ho, Wo)
    return out.reshape(b, c, h_out, w_out)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LDAAQU(nn.Module):
    """LDA-AQU upsampler: ``forward(x (B, C, H, W), size (H_out, W_out)) -> (B, C, H_out, W_out)``.

    Owns the parameters; the math is :func:`lda_aqu_upsample`. ``channels`` must be divisible by
    ``reduction``, and ``channels // reduction`` by ``groups`` and ``heads``.
    """

    def __init__(self, channels: int, cfg: LDAAQUConfig) -> None:
        super().__init__()
        if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
            raise ValueError(f"lda_aqu.kernel_size must be odd and positive, got {cfg.kernel_size}")
        if cfg.encoder_kernel < 1 or cfg.encoder_kernel % 2 == 0:
            raise ValueError(f"lda_aqu.encoder_kernel must be odd and positive, got {cfg.encoder_kernel}")
        hidden = channels // max(cfg.reduction, 1)
        if cfg.reduction < 1 or channels % cfg.reduction or hidden % cfg.groups or hidden % cfg.heads:
            raise ValueError(
                f"lda_aqu: channels {channels} / reduction {cfg.reduction} = {hidden} must be a whole number "
                f"divisible by groups {cfg.groups} and heads {cfg.heads}"
            )
        if channels % cfg.groups or channels % cfg.heads:
            raise ValueError(f"lda_aqu: channels {channels} must be divisible by groups and heads")
        self.kernel_size = cfg.kernel_size
        self.groups = cfg.groups
        self.heads = cfg.heads
        self.offset_range = cfg.offset_range
        k2 = cfg.kernel_size**2
        group_dim = hidden // cfg.groups
        self.norm = ChannelLayerNorm(channels)
        self.proj_q = nn.Conv2d(channels, hidden, 1, bias=False)
        self.proj_k = nn.Conv2d(channels, hidden, 1, bias=False)
        # Shared across groups: each group of query channels predicts its own offsets with the same convs.
        self.conv_offset = nn.Sequential(
            nn.Conv2d(group_dim, group_dim, 3, padding=1, groups=group_dim, bias=False),
            ChannelLayerNorm(group_dim),
            nn.GELU(),
            nn.Conv2d(group_dim, 2 * k2, cfg.encoder_kernel, padding=cfg.encoder_kernel // 2),
        )
        self.key_bias = nn.Parameter(torch.zeros(cfg.heads, hidden // cfg.heads, k2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Official init_weights: xavier-uniform convs, unit LayerNorms, zero last offset conv; the relative
        # position bias is trunc-normal(0.02).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)
        nn.init.trunc_normal_(self.key_bias, std=0.02)

    def forward(self, x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        b = x.shape[0]
        h_out, w_out = int(size[0]), int(size[1])
        normed = self.norm(x)
        key = self.proj_k(normed)  # (B, Ck, H, W)
        query = F.interpolate(self.proj_q(normed), size=(h_out, w_out), mode="bilinear", align_corners=False)
        ck = query.shape[1]
        offsets = self.conv_offset(query.reshape(b * self.groups, ck // self.groups, h_out, w_out))
        offsets = (offsets.tanh() * self.offset_range).view(b, self.groups, -1, 2, h_out, w_out)
        return lda_aqu_upsample(x, key, query, offsets, self.kernel_size, self.heads, self.key_bias)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, groups={self.groups}, heads={self.heads}, "
            f"offset_range={self.offset_range}"
        )


__all__ = ["LDAAQU", "ChannelLayerNorm", "lda_aqu_upsample", "neighbourhood_offsets"]
