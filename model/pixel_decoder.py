"""Multi-scale deformable-attention pixel decoder (Mask2Former's and FASeg's).

Spec §1.3. res5, res4, res3 are projected to ``conv_dim`` and refined jointly by a 6-layer deformable
encoder; res2 joins through one FPN step; a 1×1 conv gives the mask features at 1/4.

Differences between the two official decoders are two switches here:

* ``key_pe``: Mask2Former uses the shape-only sine PE; FASeg uses a "conditional" K_p, a PEG-style 3×3
  depthwise conv (``pos_linear.{l}``) on each projected, pre-encoder map (F: msdeformattn.py:423-444,538-547).
* ``hr_level``: FASeg adds a 4th input projection ``input_proj.3`` for res2 that feeds only the res2 PE, and
  hands 4 maps (+ the 1/4 FPN output) to the transformer decoder for HRCA.

Two options beyond the official decoders, both off by default (docs/focus_lda.md): ``focus.enabled`` swaps
the encoder for the Focus-style sparse one (:mod:`faseg.model.focus`), and ``upsampler="lda_aqu"`` replaces
the FPN's bilinear 1/8 → 1/4 upsampling by LDA-AQU (:mod:`faseg.model.lda_aqu`).

The whole pixel decoder runs in fp32 even under autocast, like the official ``forward_features``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone.base import ShapeSpec
from .config import PixelDecoderConfig
from .deformable_encoder import MSDeformAttnTransformerEncoderOnly
from .focus import FocusMSDeformAttnEncoder, FocusOutput
from .lda_aqu import LDAAQU
from .position_encoding import sine_position_encoding


@dataclass
class PixelDecoderOutput:
    """mask_features: (B, mask_dim, H/4, W/4).
    multi_scale_features: decoder memories, low resolution first: [1/32, 1/16, 1/8] (+ 1/4 with HRCA),
        each (B, conv_dim, H_l, W_l).
    pos: the key positional encodings K_p of those maps, same shapes (no level embedding added).
    focus: the Focus encoder's token scores and selections (:class:`faseg.model.focus.FocusOutput`) when
        ``focus.enabled``, else None; the training loss :func:`faseg.model.focus.focus_loss` reads it.
    """

    mask_features: Tensor
    multi_scale_features: list[Tensor]
    pos: list[Tensor]
    focus: FocusOutput | None = None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with an optional ``norm`` and activation, like detectron2's wrapper; the norm is an
    attribute so checkpoint names read ``adapter_1.norm.weight``."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill as detectron2 implements it: kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _norm(kind: str, channels: int) -> nn.Module | None:
    return nn.GroupNorm(32, channels) if kind == "GN" else None


class MSDeformAttnPixelDecoder(nn.Module):
    def __init__(self, cfg: PixelDecoderConfig, input_shape: dict[str, ShapeSpec], hr_level: bool) -> None:
        """
        Args:
            input_shape: backbone outputs (res2 … res5).
            hr_level: FASeg's 4-level output for HRCA (adds ``input_proj.3`` and the res2 PE).
        """
        super().__init__()
        self.key_pe = cfg.key_pe
        self.hr_level = hr_level
        shapes = sorted(input_shape.items(), key=lambda kv: kv[1].stride)  # res2, res3, res4, res5
        self.in_features = [name for name, _ in shapes]
        # Deformable-encoder levels, low resolution first: res5, res4, res3.
        self.transformer_in_features = sorted(cfg.in_features, key=lambda n: -input_shape[n].stride)
        n_levels = len(self.transformer_in_features)
        conv_dim = self.conv_dim = cfg.conv_dim

        projections = [
            nn.Sequential(nn.Conv2d(input_shape[name].channels, conv_dim, 1), nn.GroupNorm(32, conv_dim))
            for name in self.transformer_in_features
        ]
        # FPN levels below the encoder: common_stride 4 vs min encoder stride 8 → one level (res2).
        min_stride = min(input_shape[n].stride for n in self.transformer_in_features)
        num_fpn_levels = int(math.log2(min_stride) - math.log2(cfg.common_stride))
        self.fpn_features = self.in_features[:num_fpn_levels]  # ["res2"]
        # input_proj.3: res2 → conv_dim, used only for the conditional res2 PE (F: msdeformattn.py:426-430,
        # 545-547); the sine and learnable K_p do not read the projected map, so it only exists for "conditional".
        self.project_res2 = hr_level and cfg.key_pe == "conditional"
        if self.project_res2:
            projections.append(
                nn.Sequential(
                    nn.Conv2d(input_shape[self.fpn_features[-1]].channels, conv_dim, 1), nn.GroupNorm(32, conv_dim)
                )
            )
        self.input_proj = nn.ModuleList(projections)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        num_pe_levels = n_levels + int(hr_level)
        if cfg.key_pe == "conditional":
            # PEG: 3×3 depthwise conv, PyTorch's default init (the official code never re-initialises it).
            self.pos_linear = nn.ModuleList(
                nn.Conv2d(conv_dim, conv_dim, 3, padding=1, groups=conv_dim) for _ in range(num_pe_levels)
            )
        elif cfg.key_pe == "learnable":
            # One table per level at `learnable_pe_input_size`, bilinearly resized to the actual map size.
            base = cfg.learnable_pe_input_size
            strides = [input_shape[n].stride for n in self.transformer_in_features]
            if hr_level:
                strides.append(input_shape[self.fpn_features[-1]].stride)
            self.pos_embed = nn.ParameterList(
                nn.Parameter(torch.randn(1, conv_dim, max(base // s, 1), max(base // s, 1)) * 0.02) for s in strides
            )

        if cfg.focus.enabled:
            self.transformer: MSDeformAttnTransformerEncoderOnly = FocusMSDeformAttnEncoder(cfg, n_levels)
        else:
            self.transformer = MSDeformAttnTransformerEncoderOnly(cfg, n_levels)
        self.mask_features = nn.Conv2d(conv_dim, cfg.mask_dim, 1)
        c2_xavier_fill(self.mask_features)
        use_bias = cfg.norm == ""
        # Names follow the official add_module("adapter_{i}") / ("layer_{i}"), i = 1 .. num_fpn_levels.
        for idx, name in enumerate(self.fpn_features[::-1], start=1):
            lateral = Conv2d(input_shape[name].channels, conv_dim, 1, bias=use_bias, norm=_norm(cfg.norm, conv_dim))
            output = Conv2d(
                conv_dim, conv_dim, 3, padding=1, bias=use_bias, norm=_norm(cfg.norm, conv_dim), activation=nn.ReLU()
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx}", lateral)
            self.add_module(f"layer_{idx}", output)
            if cfg.upsampler == "lda_aqu":  # replaces the bilinear upsampling of this FPN step
                self.add_module(f"upsample_{idx}", LDAAQU(conv_dim, cfg.lda_aqu))
        self.upsampler = cfg.upsampler

    def _key_pe(self, level: int, projected: Tensor) -> Tensor:
        """K_p of one level; ``projected`` is the input_proj output (only its shape matters for sine/learnable)."""
        if self.key_pe == "conditional":
            return self.pos_linear[level](projected)
        b, _, h, w = projected.shape
        if self.key_pe == "learnable":
            table = self.pos_embed[level]
            if table.shape[-2:] != (h, w):
                table = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=False)
            return table.expand(b, -1, -1, -1)
        return sine_position_encoding(b, h, w, self.conv_dim, projected.device)

    def forward(self, features: dict[str, Tensor]) -> PixelDecoderOutput:
        with torch.autocast(device_type=features["res2"].device.type, enabled=False):
            return self._forward_fp32(features)

    def _forward_fp32(self, features: dict[str, Tensor]) -> PixelDecoderOutput:
        srcs, pos = [], []
        for level, name in enumerate(self.transformer_in_features):
            x = features[name].float()
            projected = self.input_proj[level](x)
            srcs.append(projected)
            pos.append(self._key_pe(level, projected))
        if self.hr_level:
            res2 = features[self.fpn_features[-1]].float()
            res2_proj = self.input_proj[len(srcs)](res2) if self.project_res2 else res2
            hr_pos = self._key_pe(len(srcs), res2_proj)

        tokens, focus = self.transformer(srcs, pos)  # (B, S, C), FocusOutput | None
        b = tokens.shape[0]
        outs = []
        for chunk, src in zip(tokens.split([s.shape[2] * s.shape[3] for s in srcs], dim=1), srcs):
            outs.append(chunk.transpose(1, 2).reshape(b, -1, src.shape[2], src.shape[3]))  # (B, C, H_l, W_l)

        for idx, name in enumerate(self.fpn_features[::-1], start=1):
            lateral = getattr(self, f"adapter_{idx}")(features[name].float())
            if self.upsampler == "lda_aqu":
                up = getattr(self, f"upsample_{idx}")(outs[-1], lateral.shape[-2:])
            else:
                up = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(getattr(self, f"layer_{idx}")(lateral + up))

        num_levels = len(srcs) + int(self.hr_level)
        multi_scale = outs[:num_levels]
        if self.hr_level:
            pos = [*pos, hr_pos]
        return PixelDecoderOutput(self.mask_features(outs[-1]), multi_scale, pos, focus)
