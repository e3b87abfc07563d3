"""Focus-style sparse deformable encoder for the pixel decoder, and its training loss.

After Focus-DETR (Zheng et al., ICCV 2023, "Less is More: Focus Attention for Efficient DETR"), adapted to
semantic segmentation; our own code, written from the paper and the authors' detrex project
(``projects/focus_detr/modeling/focus_detr_transformer.py``, ``transformer_layer.py``). docs/focus_lda.md has
the full description and the MAC numbers.

Forward (``pixel_decoder.focus.enabled``), with the levels low resolution first (1/32, 1/16, 1/8):

1. **Token scores with top-down modulation.** One scoring head per level reads ``src + pos``. Level 0 is
   scored as is; every finer level l first modulates its features with the upsampled score map of level
   l − 1: ``f_l ← f_l + α_l · f_l · up(σ(s_{l−1}))`` (α learnable, one per level pair). Focus-DETR multiplies by
   the raw upsampled logits; we use the probability so the modulation stays bounded.
2. **Cascaded selection.** Encoder layer i updates, in every level, the top
   ``k_{i,l} = ⌈keep_ratio · cascade[i] · H_l W_l⌉`` tokens by score (fixed k from the static shape: ``topk``
   + ``gather`` / ``scatter``, no data-dependent shapes). One score serves every layer, so the sets are
   nested when the cascade does not increase. The other tokens pass through the layer **unchanged** (no
   attention, no FFN).
3. **Dual attention.** Before its deformable attention, layer i ranks its selected tokens by
   ``σ(score) · σ(semantic score)``, where the semantic score is a linear head on the token's current
   features, and the top ``⌈fine_ratio · K_i⌉`` of them (across levels) attend to each other with a post-norm
   multi-head self-attention (global context that local deformable sampling lacks). Focus-DETR's
   "multi-category score" is a K-way classifier; the pixel decoder does not know K, and for segmentation we
   supervise the semantic score with "belongs to a small segment" instead (see the loss).
4. **Deformable attention for the selected queries only**: queries, offsets, weights, sampling, output
   projection, norms and FFN run on the K_i selected tokens; the values are all tokens entering the layer
   (``value_proj`` still runs over every token).

Loss (what "informative" means for semantic segmentation), from the ground-truth masks of
:func:`faseg.model.criterion.semantic_targets` (one mask per class present, so a "segment" is the region of
one class in the image). A token of level l covers a stride_l × stride_l patch of the padded input. It is
**informative** when (a) it is near a class boundary: at least two classes occur in the patches within
``boundary_radius`` tokens of it (radius 0: in its own patch), or (b) its patch holds pixels of a *small
segment*, a class covering less than ``small_segment_area`` of the image's labelled pixels. Patches made
only of ignore pixels are excluded.
``loss_focus`` is a sigmoid focal loss (α 0.25, γ 2, as Focus-DETR's foreground supervision) of every level's
scores against (a) ∪ (b), normalised by the number of positives; ``loss_focus_sem`` is the same loss of each
layer's semantic scores (on its selected tokens) against (b) alone, averaged over layers.

Trainer integration (the model output carries the scores as ``outputs.focus``, None without Focus)::

    criterion.weight_dict.update(focus_weight_dict(cfg.pixel_decoder.focus))   # once
    losses = criterion(outputs, targets)
    if outputs.focus is not None:
        losses.update(focus_loss(outputs.focus, targets))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FocusConfig, PixelDecoderConfig
from .deformable_encoder import MSDeformAttnTransformerEncoderOnly, encoder_reference_points
from .ops import MultiheadAttention

FOCUS_LOSS_NAMES = ("loss_focus", "loss_focus_sem")
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)  # score heads start at probability 0.01


# ----------------------------------------------------------------------------------------------------------
# selection: pure functions


def tokens_to_keep(ratio: float, num_tokens: int) -> int:
    """⌈ratio · num_tokens⌉, at least 1 and at most ``num_tokens`` (rounded first so 0.3·10 is 3, not 4)."""
    return min(num_tokens, max(1, math.ceil(round(ratio * num_tokens, 6))))


def layer_keep_ratios(cfg: FocusConfig, num_layers: int) -> list[float]:
    """keep_ratio · cascade[i] per layer; the last cascade entry repeats (an empty cascade means 1)."""
    cascade = list(cfg.cascade) or [1.0]
    return [cfg.keep_ratio * cascade[min(i, len(cascade) - 1)] for i in range(num_layers)]


def rank_tokens(scores: Tensor, spatial_shapes: Sequence[tuple[int, int]], counts: Sequence[int]) -> list[Tensor]:
    """Per level, the flat indices of its ``counts[l]`` best-scoring tokens, best first.

    Args:
        scores: (B, S) with the levels concatenated in ``spatial_shapes`` order.
        counts: tokens to rank per level (≤ H_l·W_l).

    Returns:
        per level (B, counts[l]) int64 indices into the S axis (level offsets added).
    """
    ranked, start = [], 0
    for (h, w), k in zip(spatial_shapes, counts):
        level = scores[:, start : start + h * w]  # (B, H_l·W_l)
        ranked.append(level.topk(k, dim=1, sorted=True).indices + start)  # (B, k)
        start += h * w
    return ranked


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, S, C), index (B, K) -> (B, K, C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: Tensor, index: Tensor, updates: Tensor) -> Tensor:
    """A copy of x (B, S, C) with rows ``index`` (B, K) replaced by ``updates`` (B, K, C)."""
    return x.scatter(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), updates)


# ----------------------------------------------------------------------------------------------------------
# modules


class TokenScoreHead(nn.Module):
    """Focus-DETR's score predictor: LN → Linear(C, h) → GELU; half the channels are replaced by their mean over
    the level (a global cue); → Linear(h, h/2) → GELU → Linear(h/2, 1). ``forward((B, N, C)) -> (B, N)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden // 2)
        self.fc3 = nn.Linear(hidden // 2, 1)
        # Prior-probability init (RetinaNet / Focus-DETR's class heads): the focal loss, normalised by the
        # number of positives, then starts near zero on images with few informative tokens.
        nn.init.constant_(self.fc3.bias, PRIOR_BIAS)

    def forward(self, x: Tensor) -> Tensor:
        z = F.gelu(self.fc1(self.norm(x)))  # (B, N, h)
        local, glob = z.split(self.hidden // 2, dim=-1)
        z = torch.cat((local, glob.mean(dim=1, keepdim=True).expand_as(glob)), -1)  # (B, N, h)
        return self.fc3(F.gelu(self.fc2(z))).squeeze(-1)  # (B, N)


class TopDownScorer(nn.Module):
    """One :class:`TokenScoreHead` per level, coarse to fine, each finer level modulated by the coarser scores."""

    def __init__(self, dim: int, n_levels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(TokenScoreHead(dim, max(dim // 2, 4)) for _ in range(n_levels))
        # Focus-DETR: alpha ~ U(-0.3, 0.3), one per coarse→fine step.
        self.alpha = nn.Parameter(torch.empty(max(n_levels - 1, 1)).uniform_(-0.3, 0.3))

    def forward(self, feats: Sequence[Tensor], spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """feats: per level (B, H_l·W_l, C), low resolution first -> per level (B, H_l·W_l) logits."""
        scores: list[Tensor] = []
        for lvl, (f, (h, w)) in enumerate(zip(feats, spatial_shapes)):
            if lvl > 0:
                ph, pw = spatial_shapes[lvl - 1]
                prev = scores[-1].sigmoid().view(-1, 1, ph, pw)  # (B, 1, H_{l-1}, W_{l-1})
                up = F.interpolate(prev, size=(h, w), mode="bilinear", align_corners=False)  # (B, 1, H_l, W_l)
                f = f + self.alpha[lvl - 1] * f * up.flatten(2).transpose(1, 2)  # (B, H_l·W_l, C)
            scores.append(self.heads[lvl](f))
        return scores


class DualAttention(nn.Module):
    """Post-norm self-attention among the fine-grained tokens: ``LN(x + MHA(x + pos, x + pos, x))``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiheadAttention(dim, heads)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        q = x + pos
        return self.norm(x + self.dropout(self.attn(q, q, x)[0]))


class FocusModules(nn.Module):
    """Parameter holder: ``scorer``, and with dual attention ``semantic_head`` and ``dual_attn.{layer}``."""

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        super().__init__()
        dim = cfg.conv_dim
        self.scorer = TopDownScorer(dim, n_levels)
        if cfg.focus.fine_ratio > 0:
            self.semantic_head = nn.Linear(dim, 1)
            nn.init.constant_(self.semantic_head.bias, PRIOR_BIAS)  # as Focus-DETR's encoder class head
            self.dual_attn = nn.ModuleList(
                DualAttention(dim, cfg.encoder_heads, cfg.encoder_dropout) for _ in range(cfg.encoder_layers)
            )


@dataclass
class FocusOutput:
    """What the Focus encoder decided in one forward (levels low resolution first, tokens flattened).

    scores: (B, S) informativeness logits of every token. spatial_shapes: [(H_l, W_l)].
    indices: per encoder layer, (B, K_i) the tokens it updated (each level's share, best first, levels
        concatenated). semantic_scores: per layer, (B, K_i) semantic logits of those tokens (empty without
        dual attention). fine_indices: per layer, (B, M_i) positions *within* ``indices[i]`` of the tokens that
        got dual attention. cfg: the config (loss targets, weight).
    """

    scores: Tensor
    spatial_shapes: list[tuple[int, int]]
    indices: list[Tensor]
    semantic_scores: list[Tensor]
    fine_indices: list[Tensor]
    cfg: FocusConfig


def _validate(cfg: FocusConfig, num_layers: int) -> None:
    if not 0.0 < cfg.keep_ratio <= 1.0:
        raise ValueError(f"pixel_decoder.focus.keep_ratio must be in (0, 1], got {cfg.keep_ratio}")
    bad = [r for r in layer_keep_ratios(cfg, num_layers) if not 0.0 < r <= 1.0]
    if bad or any(c <= 0 for c in cfg.cascade):
        raise ValueError(
            f"pixel_decoder.focus.cascade {list(cfg.cascade)} times keep_ratio {cfg.keep_ratio} must stay in (0, 1]"
        )
    if not 0.0 <= cfg.fine_ratio <= 1.0:
        raise ValueError(f"pixel_decoder.focus.fine_ratio must be in [0, 1], got {cfg.fine_ratio}")
    if cfg.boundary_radius < 0:
        raise ValueError(f"pixel_decoder.focus.boundary_radius must be >= 0, got {cfg.boundary_radius}")
    if not 0.0 <= cfg.small_segment_area <= 1.0:
        raise ValueError(f"pixel_decoder.focus.small_segment_area must be in [0, 1], got {cfg.small_segment_area}")


class FocusMSDeformAttnEncoder(MSDeformAttnTransformerEncoderOnly):
    """The deformable encoder with Focus selection (module docstring). Same parameter names as the dense
    encoder plus ``focus.*``, so a dense checkpoint loads with only the ``focus.*`` keys missing.

    ``forward(srcs, pos)`` returns the (B, S, C) tokens and the :class:`FocusOutput` (the dense encoder returns
    None in its place); the pixel decoder hands it on in the model output (``out.focus``).
    """

    def __init__(self, cfg: PixelDecoderConfig, n_levels: int) -> None:
        _validate(cfg.focus, cfg.encoder_layers)
        super().__init__(cfg, n_levels)
        self.focus_cfg = cfg.focus
        self.keep_ratios = layer_keep_ratios(cfg.focus, cfg.encoder_layers)
        self.focus = FocusModules(cfg, n_levels)

    def forward(self, srcs: list[Tensor], pos: list[Tensor]) -> tuple[Tensor, FocusOutput]:  # type: ignore[override]
        """srcs, pos: per level (B, C, H_l, W_l), low resolution first -> ((B, S, C) tokens, FocusOutput)."""
        src_flat, pos_flat, spatial_shapes = self.flatten_inputs(srcs, pos)
        sizes = [h * w for h, w in spatial_shapes]
        level_scores = self.focus.scorer((src_flat + pos_flat).split(sizes, dim=1), spatial_shapes)
        scores = torch.cat(level_scores, 1)  # (B, S)

        # k per layer and level from the static shape; one ranking, each layer takes a prefix per level.
        counts = [[tokens_to_keep(r, n) for n in sizes] for r in self.keep_ratios]  # [layer][level]
        ranked = rank_tokens(scores.detach(), spatial_shapes, [max(c) for c in zip(*counts)])
        ref_all = encoder_reference_points(spatial_shapes, src_flat.device)  # (S, 2)
        dual = self.focus_cfg.fine_ratio > 0

        out = src_flat
        indices, semantic_scores, fine_indices = [], [], []
        for i, layer in enumerate(self.encoder.layers):
            idx = torch.cat([r[:, :k] for r, k in zip(ranked, counts[i])], 1)  # (B, K_i)
            query = gather_tokens(out, idx)  # (B, K_i, C)
            query_pos = gather_tokens(pos_flat, idx)  # (B, K_i, C)
            ref = ref_all[idx].unsqueeze(2).expand(-1, -1, self.n_levels, 2)  # (B, K_i, L, 2)
            if dual:
                semantic = self.focus.semantic_head(query).squeeze(-1)  # (B, K_i)
                # ranking only (top-k is not differentiable): no graph for it
                fine_score = torch.gather(scores.detach(), 1, idx).sigmoid() * semantic.detach().sigmoid()  # (B, K_i)
                m = tokens_to_keep(self.focus_cfg.fine_ratio, sum(counts[i]))  # Python ints: static under tracing
                fine = fine_score.topk(m, dim=1, sorted=True).indices  # (B, M_i) positions within idx
                attended = self.focus.dual_attn[i](gather_tokens(query, fine), gather_tokens(query_pos, fine))
                query = scatter_tokens(query, fine, attended)
                semantic_scores.append(semantic)
                fine_indices.append(fine)
            query = layer(query, query_pos, ref, spatial_shapes, value=out)  # (B, K_i, C)
            out = scatter_tokens(out, idx, query)
            indices.append(idx)
        return out, FocusOutput(scores, spatial_shapes, indices, semantic_scores, fine_indices, self.focus_cfg)


# ----------------------------------------------------------------------------------------------------------
# loss


@torch.no_grad()
def focus_targets(
    targets: Sequence[Mapping[str, Tensor]],
    spatial_shapes: Sequence[tuple[int, int]],
    boundary_radius: int = 1,
    small_segment_area: float = 0.02,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Token-level targets of the Focus scores (module docstring).

    Args:
        targets: per image ``{"masks": (N, H, W) bool}`` at the padded input size (one mask per class);
            token (i, j) of a level with shape (H_l, W_l) covers the patch of the adaptive average pooling
            (H, W) → (H_l, W_l), i.e. a stride × stride patch when H = stride · H_l.
        spatial_shapes: [(H_l, W_l)] in encoder order.

    Returns:
        informative (B, S) float (near a boundary or in a small segment), small (B, S) float (in a small
        segment), valid (B, S) bool (the patch holds labelled pixels).
    """
    informative, small, valid = [], [], []
    for t in targets:
        masks = t["masks"].to(device=device).float()  # (N, H, W)
        n = masks.shape[0]
        per_level = [[], [], []]
        area = masks.flatten(1).sum(1)  # (N,)
        is_small = area / area.sum().clamp(min=1.0) < small_segment_area  # (N,)
        for h, w in spatial_shapes:
            if n == 0:
                zeros = torch.zeros(h * w, device=masks.device)
                per_level[0].append(zeros)
                per_level[1].append(zeros)
                per_level[2].append(zeros.bool())
                continue
            present = F.adaptive_avg_pool2d(masks[None], (h, w))[0] > 0  # (N, H_l, W_l)
            nearby = present.float()
            if boundary_radius > 0:  # classes present within boundary_radius tokens
                r = boundary_radius
                nearby = F.max_pool2d(nearby[None], 2 * r + 1, stride=1, padding=r)[0]  # (N, H_l, W_l)
            near_boundary = nearby.sum(0) >= 2  # (H_l, W_l)
            in_small = (present & is_small[:, None, None]).any(0)  # (H_l, W_l)
            has_label = present.any(0)
            per_level[0].append((near_boundary | in_small).flatten().float())
            per_level[1].append(in_small.flatten().float())
            per_level[2].append(has_label.flatten())
        informative.append(torch.cat(per_level[0]))
        small.append(torch.cat(per_level[1]))
        valid.append(torch.cat(per_level[2]))
    return torch.stack(informative), torch.stack(small), torch.stack(valid)


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, weight: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Σ weight · focal(logits, targets) (RetinaNet's sigmoid focal loss; all arguments the same shape)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma * weight).sum()


def focus_loss(focus: FocusOutput, targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """``loss_focus`` (scores vs informative tokens) and, with dual attention, ``loss_focus_sem`` (semantic
    scores vs small-segment tokens), both unweighted; weights: :func:`focus_weight_dict`.

    ``targets``: the criterion's targets (per image ``masks`` (N, H, W) at the padded input size).
    """
    if len(targets) != focus.scores.shape[0]:
        raise ValueError(f"got {len(targets)} targets for a batch of {focus.scores.shape[0]}")
    cfg = focus.cfg
    informative, small, valid = focus_targets(
        targets, focus.spatial_shapes, cfg.boundary_radius, cfg.small_segment_area, device=focus.scores.device
    )
    scores = focus.scores.float()
    weight = valid.float()
    losses = {
        "loss_focus": sigmoid_focal_loss(scores, informative, weight) / (informative * weight).sum().clamp(min=1.0)
    }
    if focus.semantic_scores:
        terms = []
        for idx, sem in zip(focus.indices, focus.semantic_scores):
            tgt, w = torch.gather(small, 1, idx), torch.gather(weight, 1, idx)  # (B, K_i)
            terms.append(sigmoid_focal_loss(sem.float(), tgt, w) / (tgt * w).sum().clamp(min=1.0))
        losses["loss_focus_sem"] = torch.stack(terms).mean()
    return losses


def focus_weight_dict(cfg: FocusConfig) -> dict[str, float]:
    """Weights of the Focus losses for ``SetCriterion.weight_dict`` ({} when Focus is off)."""
    if not cfg.enabled:
        return {}
    names = FOCUS_LOSS_NAMES if cfg.fine_ratio > 0 else FOCUS_LOSS_NAMES[:1]
    return {name: cfg.loss_weight for name in names}


__all__ = [
    "FOCUS_LOSS_NAMES",
    "DualAttention",
    "FocusMSDeformAttnEncoder",
    "FocusOutput",
    "TokenScoreHead",
    "TopDownScorer",
    "focus_loss",
    "focus_targets",
    "focus_weight_dict",
    "gather_tokens",
    "layer_keep_ratios",
    "rank_tokens",
    "scatter_tokens",
    "sigmoid_focal_loss",
    "tokens_to_keep",
]
