"""Positional queries of the transformer decoder: DFPQ and the variants of the paper's Table 5.

The pure functions below are the math; :class:`PositionalQueries` owns the parameters and decides, per
variant, which positional query each decoder layer gets.

* ``learnable``: a static learnable ``query_embed`` (Mask2Former).
* ``grid_anchor``: fixed anchor points on a regular grid, query PE = h(sine(anchor)) (Anchor DETR style).
* ``dynamic_anchor``: learnable anchor points refined after every layer by a small MLP on the query content,
  query PE = h(sine(anchor)) (DAB-DETR style).
* ``dynamic_foreground``: query PE = h(masked mean of K_p over the predicted foreground + B), recomputed from
  every layer's mask prediction.
* ``dfpq`` (FASeg, F: mask2former_transformer_decoder.py:500-589): layer 0 gets h(pool(K_p_0) + B) where pool
  averages the 1/32 PE over the pooling region of the initial mask prediction; after every low-resolution
  layer i, the next layer gets h(A_i · K_p + B) with A_i that layer's head-averaged cross-attention.

h is ``adapt_pos2d`` (Linear → ReLU → Linear, shared by every layer) and B is ``query_embed.weight``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import DecoderConfig
from .position_encoding import sine_point_encoding

_POOL_EPS = 1e-6  # F: mask2former_transformer_decoder.py:615


def attention_weighted_pe(attn: Tensor, pos: Tensor) -> Tensor:
    """A · P: (B, Q, S) × (B, S, C) -> (B, Q, C). Rows of A sum to 1, so this is a convex combination."""
    return torch.bmm(attn, pos)


def pooled_pe(weights: Tensor, pos: Tensor) -> Tensor:
    """Masked mean of the PE: Σ_s w[b,q,s]·P[b,s] / (Σ_s w[b,q,s] + 1e-6). weights (B, Q, S) in {0, 1}."""
    return torch.bmm(weights, pos) / (weights.sum(-1, keepdim=True) + _POOL_EPS)


def below_probability(logits: Tensor, threshold: float) -> Tensor:
    """``sigmoid(logits) < threshold``, decided on the logits: ``logits < logit(threshold)``.

    The official code thresholds the sigmoid (spec §1.4 attention mask; pooling mask at F: ...decoder.py:611-615).
    Comparing the logits against one precomputed constant is the same decision in exact arithmetic and leaves
    no sigmoid whose rounding differs between torch, ONNX Runtime and TensorRT (or saturates in fp16) to move a
    logit across the threshold. Thresholds outside (0, 1) block everything (≥ 1) or nothing (≤ 0), as before.
    """
    if threshold >= 1.0:
        return torch.ones_like(logits, dtype=torch.bool)
    if threshold <= 0.0:
        return torch.zeros_like(logits, dtype=torch.bool)
    return logits < math.log(threshold / (1.0 - threshold))


def pooling_weights(mask_logits_l0: Tensor, threshold: float, region: str) -> Tensor:
    """Pooling region from mask logits already resized to the 1/32 map: (B, Q, S0) -> (B, Q, S0) float.

    ``complement`` replicates the official ``prob < threshold`` (the area the query does *not* cover);
    ``foreground`` is ``prob >= threshold``.
    """
    below = below_probability(mask_logits_l0, threshold)
    selected = below if region == "complement" else ~below
    return selected.to(mask_logits_l0.dtype)


def grid_anchors(num_queries: int) -> Tensor:
    """num_queries points on the most square rows × cols grid with rows·cols = num_queries; (Q, 2) as (x, y)."""
    rows = max(r for r in range(1, math.isqrt(num_queries) + 1) if num_queries % r == 0)
    cols = num_queries // rows
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)), -1)


class PositionalQueries(nn.Module):
    """Parameters and update rules of the positional queries.

    The decoder calls, in order: :meth:`initial` once (after the prediction on the learnable queries), then
    after every layer :meth:`update` (low-resolution layers) — HR layers leave the positional query as is.
    :meth:`static` is the query PE used by HRCA cross-attention (official: B without h).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.mode = cfg.positional_queries
        self.pool_threshold = cfg.pool_threshold
        self.pool_region = cfg.pool_region
        c, q = cfg.hidden_dim, cfg.num_queries
        if self.mode in ("learnable", "dfpq", "dynamic_foreground"):
            self.query_embed = nn.Embedding(q, c)  # B
        if self.mode != "learnable":
            # h: one module shared by every layer (F: mask2former_transformer_decoder.py:426-430)
            self.adapt_pos2d = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))
        if self.mode == "grid_anchor":
            self.register_buffer("anchors", grid_anchors(q), persistent=False)
        if self.mode == "dynamic_anchor":
            self.query_anchor = nn.Embedding(q, 2)  # inverse-sigmoid anchor (x, y)
            nn.init.uniform_(self.query_anchor.weight, -2.0, 2.0)
            self.anchor_refine = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, 2))
            nn.init.zeros_(self.anchor_refine[2].weight)
            nn.init.zeros_(self.anchor_refine[2].bias)

    def _bias(self, batch: int) -> Tensor:
        return self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)

    def _from_points(self, points: Tensor) -> Tensor:
        return self.adapt_pos2d(sine_point_encoding(points, self.adapt_pos2d[0].in_features))

    def static(self, batch: int, current: Tensor) -> Tensor:
        """Query PE for HRCA cross-attention: the learnable B where the variant has one, else ``current``."""
        return self._bias(batch) if hasattr(self, "query_embed") else current

    def initial(self, batch: int, mask_logits_l0: Tensor, pos_l0: Tensor) -> tuple[Tensor, Tensor | None]:
        """Positional query of layer 0 and the anchor state (``dynamic_anchor`` only, else None).

        mask_logits_l0 (B, Q, S0): the initial prediction's logits resized to the 1/32 map; pos_l0 (B, S0, C)
        its K_p. Returns (B, Q, C) and (B, Q, 2) | None.
        """
        if self.mode == "learnable":
            return self._bias(batch), None
        if self.mode == "grid_anchor":
            return self._from_points(self.anchors).unsqueeze(0).expand(batch, -1, -1), None
        if self.mode == "dynamic_anchor":
            anchor = self.query_anchor.weight.sigmoid().unsqueeze(0).expand(batch, -1, -1)
            return self._from_points(anchor), anchor
        region = self.pool_region if self.mode == "dfpq" else "foreground"
        weights = pooling_weights(mask_logits_l0, self.pool_threshold, region)
        return self.adapt_pos2d(pooled_pe(weights, pos_l0) + self._bias(batch)), None

    def update(
        self,
        current: Tensor,
        anchor: Tensor | None,
        attn: Tensor,
        pos: Tensor,
        content: Tensor,
        mask_logits_at_level: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """Positional query (and anchor state) for the next layer, after a low-resolution layer.

        attn (B, Q, S): that layer's head-averaged cross-attention; pos (B, S, C): its K_p; content (B, Q, C):
        the layer's output queries; mask_logits_at_level (B, Q, S): the new prediction resized to the same
        map (only ``dynamic_foreground`` reads it).
        """
        if self.mode in ("learnable", "grid_anchor"):
            return current, anchor
        if self.mode == "dfpq":
            return self.adapt_pos2d(attention_weighted_pe(attn, pos) + self._bias(attn.shape[0])), None
        if self.mode == "dynamic_foreground":
            if mask_logits_at_level is None:
                raise ValueError("dynamic_foreground needs the mask logits at the layer's level")
            weights = pooling_weights(mask_logits_at_level, self.pool_threshold, "foreground")
            return self.adapt_pos2d(pooled_pe(weights, pos) + self._bias(attn.shape[0])), None
        # dynamic_anchor: refine in inverse-sigmoid space (DAB-DETR). DAB-DETR detaches the refined anchor
        # because its box loss trains the refinement; segmentation has no box loss, so the gradient through
        # the next layer's query PE is what trains `anchor_refine`, and nothing is detached.
        if anchor is None:
            raise ValueError("dynamic_anchor needs the anchor state returned by initial()")
        anchor = (torch.logit(anchor, eps=1e-5) + self.anchor_refine(content)).sigmoid()
        return self._from_points(anchor), anchor
