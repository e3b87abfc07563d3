"""Swin Transformer backbone with the official parameter names (Mask2Former's ``D2SwinTransformer``).

Follows ``mask2former/modeling/backbone/swin.py`` (itself the Swin detection / segmentation variant of
microsoft/Swin-Transformer; Liu et al., "Swin Transformer", arXiv 2103.14030), so official FASeg / Mask2Former
Swin checkpoints and the ImageNet ``swin_*_patch4_window*`` weights load by name::

    patch_embed.proj.*  patch_embed.norm.*  absolute_pos_embed (only with ape)
    layers.{s}.blocks.{b}.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table,
                           attn.relative_position_index (buffer), norm2, mlp.fc1, mlp.fc2}.*
    layers.{s}.downsample.{reduction, norm}.*   (s < 3)
    norm{0..3}.*                                 (one LayerNorm per returned stage)

Behaviour kept from the official segmentation variant (checkpoints were trained with it):

- Inputs whose H or W is not a multiple of the patch size are zero-padded bottom/right before the patch
  embedding; every block zero-pads its (already layer-normed) map bottom/right to a multiple of the window.
  The padded tokens are *not* masked out of the attention; only the cyclic-shift mask is applied.
- Every odd block is shifted by ``window_size // 2``, even when the map is smaller than one window (the
  classification code disables the shift there; the segmentation code does not).
- The shift mask uses -100 (not -inf) for blocked pairs.

Left out because no official config uses them (all 0 / None): dropout, attention dropout and ``qk_scale``;
also ``frozen_stages`` (FASeg trains the whole backbone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from ..config import SwinConfig
from .base import Backbone, ShapeSpec

NormLayer = Callable[[int], nn.Module]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _init_linear(linear: nn.Linear) -> None:
    """trunc_normal(std=0.02) weights, zero bias (microsoft/Swin-Transformer ``_init_weights``)."""
    nn.init.trunc_normal_(linear.weight, std=0.02)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al., arXiv 1603.09382): drop the whole residual branch per sample.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged. Identity in eval.
    Our own implementation: timm (which the official code imports ``DropPath`` from) is not usable here.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one decision per sample: (B, 1, ..., 1)
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path` (replaces ``timm.models.layers.DropPath``; no parameters)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` -> (B·nW, window_size, window_size, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, c)


def window_reverse(windows: Tensor, window_size: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, window_size, window_size, C) -> (B, H, W, C)."""
    num_windows = (h // window_size) * (w // window_size)
    b = windows.shape[0] // num_windows
    x = windows.view(b, h // window_size, w // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


def shifted_window_mask(
    hp: int, wp: int, window_size: int, shift_size: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Additive attention mask for shifted windows over a padded (hp, wp) map -> (nW, N, N), N = ws².

    After the cyclic shift by -``shift_size``, the last window row / column mixes tokens from up to three
    regions of the unshifted map. Tokens of different regions must not attend to each other: their pair
    gets -100 (the official constant), pairs within a region get 0.
    """
    # Region label 3·row_band + col_band, bands [0, hp-ws), [hp-ws, hp-shift), [hp-shift, hp) (official
    # slices (0, -ws), (-ws, -shift), (-shift, None)). Computed arithmetically: no empty-slice writes, which
    # the ONNX exporter cannot handle when the map is a single window.
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    row_band = (rows >= hp - window_size).long() + (rows >= hp - shift_size).long()  # (Hp,)
    col_band = (cols >= wp - window_size).long() + (cols >= wp - shift_size).long()  # (Wp,)
    region = (3 * row_band[:, None] + col_band[None, :]).to(dtype)  # (Hp, Wp)
    region = region.view(1, hp, wp, 1)
    region = window_partition(region, window_size).view(-1, window_size * window_size)  # (nW, N)
    diff = region.unsqueeze(1) - region.unsqueeze(2)  # (nW, N, N)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def relative_position_index(window_size: int) -> Tensor:
    """(N, N) int64 index into the ((2ws-1)², heads) bias table for every token pair of a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    )  # (2, ws, ws)
    coords = coords.flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2), each in [-(ws-1), ws-1]
    rel = rel + (window_size - 1)  # shift to [0, 2ws-2]
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]  # (N, N), row-major in the (2ws-1)² table


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        _init_linear(self.fc1)
        _init_linear(self.fc2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )  # ((2ws-1)², nH)
        # Persistent, as in the official code: official checkpoints contain it, so loading must accept it.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        _init_linear(self.qkv)
        _init_linear(self.proj)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B·nW, N, C); mask: (nW, N, N) additive or None -> (B·nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)  # (B·nW, N, 3, nH, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B·nW, nH, N, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B·nW, nH, N, N)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N·N, nH)
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # + (1, nH, N, N)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(bw, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)  # (B·nW, N, C)
        return self.proj(x)


class SwinTransformerBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, each with a residual and stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: NormLayer = nn.LayerNorm,
    ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size), got {shift_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, h: int, w: int, shift_mask: Tensor | None) -> Tensor:
        """x: (B, H·W, C); shift_mask: (nW, N, N) for the padded map, used only if this block shifts."""
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"expected {h}×{w}={h * w} tokens, got {length}")
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        pad_r = (ws - w % ws) % ws
        pad_b = (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C), zeros after the norm
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        windows = window_partition(x, ws).view(-1, ws * ws, c)  # (B·nW, N, C)
        windows = self.attn(windows, mask=mask)  # (B·nW, N, C)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, hp, wp)  # (B, Hp, Wp, C)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)  # (B, H·W, C)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2×2 neighbourhood concat (4C) -> LayerNorm -> Linear to 2C: halves H and W (odd sizes padded)."""

    def __init__(self, dim: int, norm_layer: NormLayer = nn.LayerNorm) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)
        _init_linear(self.reduction)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        """(B, H·W, C) -> (B, ceil(H/2)·ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # (B, H', W', C), H' and W' even
        # Official concat order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )  # (B, H'/2, W'/2, 4C)
        x = x.view(b, -1, 4 * c)
        return self.reduction(self.norm(x))  # (B, H'/2·W'/2, 2C)


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular / shifted windows, then optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: Sequence[float],
        norm_layer: NormLayer,
        downsample: bool,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(drop_path) != depth:
            raise ValueError(f"need one drop-path rate per block ({depth}), got {len(drop_path)}")
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=0 if i % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_path[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim, norm_layer) if downsample else None

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, int, int]:
        """x: (B, H·W, C) -> (stage output (B, H·W, C), next input (B, H'·W', C'), H', W')."""
        ws = self.window_size
        hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
        mask = None
        if len(self.blocks) > 1 and self.shift_size > 0:  # only odd blocks shift
            mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device, x.dtype)  # (nW, N, N)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, h, w, mask, use_reentrant=False)
            else:
                x = block(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv embedding, optional LayerNorm: (B, 3, H, W) -> (B, C, H/p, W/p)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_layer: NormLayer | None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None
        # proj keeps PyTorch's default conv init, as in the official code.

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))  # bottom/right pad to multiples of p
        x = self.proj(x)  # (B, C, Hp, Wp)
        if self.norm is not None:
            b, c, hp, wp = x.shape
            x = self.norm(x.flatten(2).transpose(1, 2))  # (B, Hp·Wp, C)
            x = x.transpose(1, 2).reshape(b, c, hp, wp)
        return x


class SwinTransformer(Backbone):
    """Swin backbone returning ``res2..res5`` (channels embed_dim·2^i, strides 4·2^i for patch size 4)."""

    def __init__(
        self,
        *,
        pretrain_img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        norm_layer: NormLayer = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        out_features: Sequence[str] = STAGE_NAMES,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(STAGE_NAMES) or len(num_heads) != len(STAGE_NAMES):
            raise ValueError(f"Swin needs {len(STAGE_NAMES)} stages, got depths={depths} heads={num_heads}")
        unknown = set(out_features) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown Swin output(s) {sorted(unknown)}; choose from {STAGE_NAMES}")
        self.ape = ape
        self._out_features = tuple(out_features)
        self.num_features = [embed_dim * 2**i for i in range(len(depths))]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))  # (1, C, G, G)
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)

        # Stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    self.num_features[i],
                    depth,
                    num_heads[i],
                    window_size,
                    mlp_ratio,
                    qkv_bias,
                    drop_path=rates[start : start + depth],
                    norm_layer=norm_layer,
                    downsample=i < len(depths) - 1,
                    use_checkpoint=use_checkpoint,
                )
            )
        # One LayerNorm per returned stage (D2SwinTransformer); all four always exist so the names match.
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", norm_layer(channels))

        # Init note: the official D2SwinTransformer defines `_init_weights` but never applies it, so its
        # Linears keep PyTorch's default init; every official run starts from ImageNet weights, so this only
        # matters from scratch. We init as microsoft/Swin-Transformer does: trunc_normal(0.02) Linears and
        # bias tables, zero biases (done inside each module), LayerNorms ones / zeros (nn.LayerNorm default).

        self._shapes = {
            name: ShapeSpec(channels=self.num_features[i], stride=patch_size * 2**i)
            for i, name in enumerate(STAGE_NAMES)
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"SwinTransformer takes a (B, C, H, W) input, got shape {tuple(x.shape)}")
        x = self.patch_embed(x)  # (B, C, Wh, Ww)
        h, w = x.shape[-2:]
        if self.ape:
            # The table is for the pretraining size; resize it to the current grid (official: bicubic).
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = x.flatten(2).transpose(1, 2)  # (B, Wh·Ww, C)

        outputs: dict[str, Tensor] = {}
        for i, (name, layer) in enumerate(zip(STAGE_NAMES, self.layers, strict=True)):
            out, x, h_next, w_next = layer(x, h, w)  # out: (B, H·W, C_i); x: (B, H'·W', C_i+1)
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            h, w = h_next, w_next
        return outputs  # res_k: (B, C_k, ceil(H/2^k), ceil(W/2^k))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        """Inputs should be padded to multiples of this (D2SwinTransformer: 32)."""
        return 32


def build_swin(cfg: SwinConfig) -> SwinTransformer:
    """Translate a :class:`SwinConfig` into a :class:`SwinTransformer` (D2SwinTransformer's arguments)."""
    return SwinTransformer(
        pretrain_img_size=cfg.pretrain_img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads),
        window_size=cfg.window_size,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        drop_path_rate=cfg.drop_path_rate,
        ape=cfg.ape,
        patch_norm=cfg.patch_norm,
    )
