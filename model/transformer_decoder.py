"""Masked-attention transformer decoder: Mask2Former's and FASeg's, one class.

Spec §1.4 (Mask2Former) and §2 (FASeg). Every layer is cross-attention → self-attention → FFN, each
post-norm. Layer i attends to:

* HRCA off (Mask2Former): level i mod 3 of [1/32, 1/16, 1/8], masked.
* HRCA on (FASeg): i mod 4 ∈ {0, 1, 2} → that low-resolution level, masked; i mod 4 = 3 → the top-k
  high-resolution memory gathered from the 1/4 map (unmasked), selected by the summed 1/32 attention of the
  round's first layer, with the static query PE.

A prediction head (shared LayerNorm, class Linear, 3-layer mask MLP, einsum with the mask features) runs on
the learnable queries before layer 0 and after every layer; its mask logits, resized to the next layer's map,
give that layer's attention mask (blocked where sigmoid < ``mask_threshold``). Parameter names follow the
official ``MultiScaleMaskedTransformerDecoder(FASeg)`` so checkpoints load by name (the positional-query
parameters live under ``pos_queries.``; the checkpoint importers map them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DecoderConfig
from .focus import FocusOutput
from .ops import MultiheadAttention, hrca_select, topk_cross_attention
from .positional_queries import PositionalQueries, below_probability


@dataclass
class LayerTrace:
    """What one decoder layer saw; returned when ``forward(..., trace=True)`` (tests, analysis).

    level: the memory level index, or "hr". cross_query_pos / self_query_pos: (B, Q, C) positional queries
    used by cross- and self-attention. attn: (B, Q, S) head-averaged cross-attention (None for HR layers).
    key_pos: (B, S, C) key PE of the memory (low-resolution layers). hr_indices: the selected 1/32 tokens
    (window mode) or 1/4 pixels (bilinear mode) of an HR layer.
    """

    level: int | str
    cross_query_pos: Tensor
    self_query_pos: Tensor
    attn: Tensor | None = None
    key_pos: Tensor | None = None
    attn_mask: Tensor | None = None
    hr_indices: Tensor | None = None


@dataclass
class DecoderOutput:
    """pred_logits: (B, Q, K+1), last column = no-object. pred_masks: (B, Q, H/4, W/4) mask logits.
    aux_outputs: the earlier predictions (the one on the learnable queries first), each a dict with the same
    two keys. trace: per-layer :class:`LayerTrace` when requested. focus: the pixel decoder's Focus output
    (token scores for the Focus loss) when that option is on, else None."""

    pred_logits: Tensor
    pred_masks: Tensor
    aux_outputs: list[dict[str, Tensor]] = field(default_factory=list)
    trace: list[LayerTrace] = field(default_factory=list)
    focus: FocusOutput | None = None


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor, query_pos: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        q = x + query_pos
        out = tgt + self.dropout(self.self_attn(q, q, x)[0])
        return out if self.pre_norm else self.norm(out)


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _residual(self, tgt: Tensor, update: Tensor) -> Tensor:
        out = tgt + self.dropout(update)
        return out if self.pre_norm else self.norm(out)

    def forward(
        self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor, attn_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """tgt (B, Q, C); memory, pos (B, S, C); attn_mask (B, 1, Q, S) bool -> (B, Q, C), attn (B, Q, S)."""
        x = self.norm(tgt) if self.pre_norm else tgt
        update, attn = self.multihead_attn(x + query_pos, memory + pos, memory, attn_mask)
        return self._residual(tgt, update), attn

    def forward_hr(
        self,
        tgt: Tensor,
        feat: Tensor,
        pos: Tensor,
        query_pos: Tensor,
        coarse_attn: Tensor,
        level0_hw: tuple[int, int],
        mode: str,
        divisor: int,
    ) -> Tensor:
        """HRCA: attention over the top-k 1/4 memory (:func:`faseg.model.ops.topk_cross_attention`)."""
        x = self.norm(tgt) if self.pre_norm else tgt
        attn = self.multihead_attn
        update = topk_cross_attention(
            x + query_pos,
            feat,
            pos,
            coarse_attn,
            attn.in_proj_weight,
            attn.in_proj_bias,
            attn.out_proj.weight,
            attn.out_proj.bias,
            attn.num_heads,
            level0_hw,
            mode,
            divisor,
        )
        return self._residual(tgt, update)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: Tensor) -> Tensor:
        x = self.norm(tgt) if self.pre_norm else tgt
        out = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return out if self.pre_norm else self.norm(out)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (names ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def unmask_full_rows(attn_mask: Tensor) -> Tensor:
    """Official rule before every masked layer: a query whose mask blocks every key attends everywhere."""
    return attn_mask & ~attn_mask.all(dim=-1, keepdim=True)


def resize_features(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, h, w) -> (B, C, H, W): the bilinear (align_corners=False) resize to a memory level."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def resize_mask_logits(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, Q, h, w) -> (B, Q, H·W) resized to a memory level, flattened."""
    return resize_features(masks, size).flatten(2)


def mask_logits(mask_embed: Tensor, mask_features: Tensor) -> Tensor:
    """(B, Q, D) embeddings × (B, D, h, w) features -> (B, Q, h, w) mask logits."""
    return torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)


class MaskedTransformerDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, num_classes: int, in_channels: int, mask_dim: int) -> None:
        super().__init__()
        if in_channels != cfg.hidden_dim:
            # The official decoders use an identity input_proj whenever the two match (always, in every
            # released config); a projection is not implemented rather than silently half-supported.
            raise ValueError(f"pixel decoder channels {in_channels} must equal decoder hidden_dim {cfg.hidden_dim}")
        self.cfg = cfg
        self.num_heads = cfg.nheads
        self.num_layers = cfg.dec_layers
        self.hrca = cfg.hrca
        self.num_low_levels = 3
        self.cycle = 4 if cfg.hrca != "off" else 3  # layers per round; slot 3 is HR
        c = cfg.hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(c, cfg.nheads, cfg.dropout, cfg.pre_norm) for _ in range(cfg.dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(c, cfg.nheads, cfg.dropout, cfg.pre_norm) for _ in range(cfg.dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(c, cfg.dim_feedforward, cfg.dropout, cfg.pre_norm) for _ in range(cfg.dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(c)
        self.query_feat = nn.Embedding(cfg.num_queries, c)  # initial content queries
        self.pos_queries = PositionalQueries(cfg)
        self.level_embed = nn.Embedding(self.cycle, c)
        self.class_embed = nn.Linear(c, num_classes + 1)
        self.mask_embed = MLP(c, c, mask_dim, 3)

    def _level(self, i: int) -> int | str:
        slot = i % self.cycle
        return "hr" if slot == 3 else slot

    def _heads(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """queries (B, Q, C) -> class logits (B, Q, K+1), mask embeddings (B, Q, D)."""
        x = self.decoder_norm(queries)
        return self.class_embed(x), self.mask_embed(x)

    def forward(
        self,
        features: list[Tensor],
        mask_features: Tensor,
        pos: list[Tensor],
        trace: bool = False,
        aux_outputs: bool = True,
    ) -> DecoderOutput:
        """features / pos: per level (B, C, H_l, W_l), low resolution first ([1/32, 1/16, 1/8] + [1/4] with
        HRCA); mask_features (B, D, H/4, W/4).

        ``aux_outputs=False`` (serving): the earlier predictions are not returned, so their masks are never made
        at H/4 × W/4. Each is needed only resized to a memory level (the next layer's attention mask, the
        positional queries), and a bilinear resize is linear: resize(e · M) = e · resize(M). So the mask
        features are resized once per level and each mask is computed there, the same logits up to rounding
        for a fraction of the multiply-adds (the official code computes them at H/4 and resizes)."""
        expected = self.cycle
        if len(features) != expected or len(pos) != expected:
            raise ValueError(
                f"decoder expects {expected} feature levels, got {len(features)} features / {len(pos)} PEs"
            )
        b = mask_features.shape[0]
        sizes = [(int(f.shape[2]), int(f.shape[3])) for f in features[: self.num_low_levels]]
        # Memories of the low-resolution levels: src_l = feat_l + level_embed[l], flattened to (B, S_l, C).
        memories = [
            features[lvl].flatten(2).transpose(1, 2) + self.level_embed.weight[lvl]
            for lvl in range(self.num_low_levels)
        ]
        key_pos = [pos[lvl].flatten(2).transpose(1, 2) for lvl in range(self.num_low_levels)]  # (B, S_l, C)
        if self.hrca != "off":
            hr_feat = features[3] + self.level_embed.weight[3].view(1, -1, 1, 1)  # (B, C, H/4, W/4)
            hr_pos = pos[3]

        level_mask_features = None if aux_outputs else [resize_features(mask_features, size) for size in sizes]

        def masks_at(embed: Tensor, full: Tensor | None, lvl: int) -> Tensor:
            """One prediction's mask logits at memory level ``lvl``, flattened (B, Q, S_lvl)."""
            if full is not None:
                return resize_mask_logits(full, sizes[lvl])
            assert level_mask_features is not None
            return mask_logits(embed, level_mask_features[lvl]).flatten(2)

        output = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)  # (B, Q, C)
        logits, embed = self._heads(output)
        masks = mask_logits(embed, mask_features) if aux_outputs else None
        predictions = [(logits, masks)]
        mask_l0 = masks_at(embed, masks, 0)  # (B, Q, S0)
        attn_mask = below_probability(mask_l0, self.cfg.mask_threshold).unsqueeze(1)  # (B, 1, Q, S0)
        query_pos, anchor = self.pos_queries.initial(b, mask_l0, key_pos[0])
        coarse_attn: Tensor | None = None
        traces: list[LayerTrace] = []

        for i in range(self.num_layers):
            level = self._level(i)
            cross = self.transformer_cross_attention_layers[i]
            if level == "hr":
                assert coarse_attn is not None  # an HR layer always follows a 1/32 layer
                static_pos = self.pos_queries.static(b, query_pos)
                output = cross.forward_hr(
                    output, hr_feat, hr_pos, static_pos, coarse_attn, sizes[0], self.hrca, self.cfg.hrca_topk_divisor
                )
                layer_trace = LayerTrace("hr", static_pos, query_pos) if trace else None
                attn = None
            else:
                attn_mask = unmask_full_rows(attn_mask)
                output, attn = cross(output, memories[level], key_pos[level], query_pos, attn_mask)
                if level == 0:
                    coarse_attn = attn
                layer_trace = (
                    LayerTrace(level, query_pos, query_pos, attn, key_pos[level], attn_mask) if trace else None
                )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            logits, embed = self._heads(output)
            last = i + 1 == self.num_layers
            masks = mask_logits(embed, mask_features) if aux_outputs or last else None
            predictions.append((logits, masks))

            next_level = self._level(i + 1)
            if not last and next_level != "hr":
                # The official code also builds a 1/4-size mask before HR layers and never uses it; skipped.
                assert isinstance(next_level, int)
                next_logits = masks_at(embed, masks, next_level)
                attn_mask = below_probability(next_logits, self.cfg.mask_threshold).unsqueeze(1)
            if level != "hr":
                assert isinstance(level, int)
                at_level = (
                    masks_at(embed, masks, level) if self.pos_queries.mode == "dynamic_foreground" else None
                )
                query_pos, anchor = self.pos_queries.update(query_pos, anchor, attn, key_pos[level], output, at_level)
            if layer_trace is not None:
                if level == "hr":
                    layer_trace.hr_indices = self._hr_indices(coarse_attn, hr_feat, hr_pos, sizes[0])
                traces.append(layer_trace)

        final_logits, final_masks = predictions[-1]
        assert final_masks is not None
        aux = [{"pred_logits": lg, "pred_masks": mk} for lg, mk in predictions[:-1]] if aux_outputs else []
        return DecoderOutput(final_logits, final_masks, aux, traces)

    def _hr_indices(self, coarse_attn: Tensor, feat: Tensor, pos: Tensor, level0_hw: tuple[int, int]) -> Tensor:
        return hrca_select(coarse_attn, feat, pos, level0_hw, self.hrca, self.cfg.hrca_topk_divisor)[2]
