"""Set criterion: Hungarian matching, then class, mask and dice losses with deep supervision (spec §3).

Call order of ``SetCriterion.forward`` (the order the random draws happen in, which is what makes a seeded
generator reproduce a loss exactly):

1. ``num_masks`` = targets in the global batch (all-reduced, divided by the world size, clamped ≥ 1).
2. Final prediction: match → ``loss_ce`` → ``loss_mask`` / ``loss_dice`` (importance-sampled points).
3. Each aux prediction i, earliest first: match again → the same three losses, suffixed ``_i``.

Loss definitions (M: mask2former/modeling/criterion.py, spec §3.3):

- ``loss_ce``: cross-entropy over K+1 classes for every query; unmatched queries target no-object (index K);
  class weights 1 and ``eos_coef`` for no-object, weighted-mean reduction (Σ w·ce / Σ w).
- ``loss_mask``: Σ_matched mean_points BCE-with-logits / num_masks.
- ``loss_dice``: Σ_matched [1 − (2Σσ(p)t + 1) / (Σσ(p) + Σt + 1)] / num_masks.

Both mask losses read the predicted mask and its target at the same ``num_points`` points per matched pair:
the ``importance_sample_ratio`` share with the most uncertain predicted logits among
``oversample_ratio · num_points`` uniform draws, the rest uniform. Pixels labelled ignore belong to no target
mask, so they count as negatives (the official "TODO use valid" is kept as is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .matcher import HungarianMatcher, Indices, output_field
from .point_sample import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample

LOSS_NAMES = ("loss_ce", "loss_mask", "loss_dice")


def semantic_targets(
    label_map: Tensor,
    ignore_index: int = 255,
    pad_to: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Per-class binary masks of a semantic label map (spec §3.1).

    One mask per class present, in increasing class order; ``ignore_index`` pixels belong to no mask.

    Args:
        label_map: (H, W) integer class ids.
        ignore_index: label that gets no mask.
        pad_to: optional (H_pad, W_pad) ≥ (H, W); masks are zero-padded at the bottom and right, as the
            official model pads targets to the padded batch size.

    Returns:
        ``{"labels": (N,) int64, "masks": (N, H, W) bool}``; N may be 0.
    """
    if label_map.dim() != 2:
        raise ValueError(f"label_map must be (H, W), got shape {tuple(label_map.shape)}")
    label_map = label_map.long()
    classes = torch.unique(label_map)  # sorted
    classes = classes[classes != ignore_index]  # (N,)
    masks = label_map[None] == classes[:, None, None]  # (N, H, W)
    if pad_to is not None:
        h, w = label_map.shape
        if pad_to[0] < h or pad_to[1] < w:
            raise ValueError(f"pad_to {pad_to} is smaller than the label map {h}x{w}")
        masks = F.pad(masks, (0, pad_to[1] - w, 0, pad_to[0] - h))
    return {"labels": classes, "masks": masks}


def build_weight_dict(
    num_aux: int,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
) -> dict[str, float]:
    """Loss weights for the final prediction and ``num_aux`` aux predictions (FASeg 13, Mask2Former 9).

    Every prediction gets the same three weights (spec §3.3).
    """
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    for i in range(num_aux):
        weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Σ_masks mean_points BCE-with-logits / num_masks. inputs, targets: (M, P)."""
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")  # (M, P)
    return loss.mean(1).sum() / num_masks


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Σ_masks [1 − (2Σσt + 1) / (Σσ + Σt + 1)] / num_masks. inputs (logits), targets: (M, P)."""
    inputs = inputs.sigmoid()  # (M, P)
    numerator = 2 * (inputs * targets).sum(-1)  # (M,)
    denominator = inputs.sum(-1) + targets.sum(-1)  # (M,)
    loss = 1 - (numerator + 1) / (denominator + 1)  # (M,)
    return loss.sum() / num_masks


def _src_permutation_idx(indices: Indices) -> tuple[Tensor, Tensor]:
    """(batch index, query index) of every matched pair, image by image."""
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def _matched_target_masks(targets: Sequence[Mapping[str, Tensor]], indices: Indices, like: Tensor) -> Tensor:
    """Matched target masks in matching order (the order of ``_src_permutation_idx``). -> (M, H, W)."""
    out = [t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)]
    return torch.cat(out).to(device=like.device, dtype=like.dtype)


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SetCriterion(nn.Module):
    """Mask2Former / FASeg training loss (spec §3.3).

    Args:
        num_classes: K, the number of real classes (the logits have K+1 columns).
        matcher: assigns queries to targets for every prediction set.
        weight_dict: loss name → weight, e.g. from ``build_weight_dict``; used by ``weighted`` and ``total``.
        eos_coef: class weight of no-object in ``loss_ce`` (0.1).
        num_points: points per matched mask for the mask losses (12544).
        oversample_ratio: uniform draws per kept point before importance selection (3).
        importance_sample_ratio: share of the points chosen by uncertainty (0.75).
    """

    empty_weight: Tensor

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float],
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Persistent: official checkpoints carry it as ``criterion.empty_weight``.
        self.register_buffer("empty_weight", empty_weight)

    # ---------------------------------------------------------------- loss terms

    def loss_labels(self, outputs: Any, targets: Sequence[Mapping[str, Tensor]], indices: Indices) -> Tensor:
        """Weighted cross-entropy over K+1 classes for every query."""
        src_logits = output_field(outputs, "pred_logits").float()  # (B, Q, K+1)
        if src_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {src_logits.shape[-1]} columns, expected num_classes + 1 = "
                f"{self.num_classes + 1}"
            )
        batch_idx, src_idx = _src_permutation_idx(indices)
        target_classes_o = torch.cat(
            [t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, indices)]
        )  # (M,)
        target_classes = torch.full(
            src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device
        )  # (B, Q), no-object everywhere
        target_classes[batch_idx.to(src_logits.device), src_idx.to(src_logits.device)] = target_classes_o.to(
            device=src_logits.device, dtype=torch.int64
        )
        weight = self.empty_weight.to(src_logits)
        return F.cross_entropy(src_logits.transpose(1, 2), target_classes, weight)  # (B, K+1, Q) vs (B, Q)

    def loss_masks(
        self,
        outputs: Any,
        targets: Sequence[Mapping[str, Tensor]],
        indices: Indices,
        num_masks: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(loss_mask, loss_dice) over the matched pairs at importance-sampled points."""
        pred_masks: Tensor = output_field(outputs, "pred_masks")  # (B, Q, h, w)
        batch_idx, src_idx = _src_permutation_idx(indices)
        if src_idx.numel() == 0:
            # No target anywhere in the batch: zero losses still connected to the graph, so every parameter
            # gets a (zero) gradient and DDP sees the same graph on every rank.
            zero = pred_masks.sum() * 0.0
            return zero, zero.clone()
        src_masks = pred_masks[batch_idx.to(pred_masks.device), src_idx.to(pred_masks.device)]  # (M, h, w)
        target_masks = _matched_target_masks(targets, indices, src_masks)  # (M, H, W)

        src_masks = src_masks[:, None]  # (M, 1, h, w)
        target_masks = target_masks[:, None]  # (M, 1, H, W)
        with torch.no_grad():
            point_coords = get_uncertain_point_coords_with_randomness(
                src_masks,
                calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generator=generator,
            )  # (M, P, 2)
            point_labels = point_sample(target_masks, point_coords).squeeze(1).float()  # (M, P)
        point_logits = point_sample(src_masks, point_coords).squeeze(1).float()  # (M, P)
        return (
            sigmoid_ce_loss(point_logits, point_labels, num_masks),
            dice_loss(point_logits, point_labels, num_masks),
        )

    def _losses(
        self,
        outputs: Any,
        targets: Sequence[Mapping[str, Tensor]],
        num_masks: float,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        indices = self.matcher(outputs, targets, generator=generator)
        loss_ce = self.loss_labels(outputs, targets, indices)
        loss_mask, loss_dice = self.loss_masks(outputs, targets, indices, num_masks, generator=generator)
        return {"loss_ce": loss_ce, "loss_mask": loss_mask, "loss_dice": loss_dice}

    # ---------------------------------------------------------------- public

    def get_num_masks(self, targets: Sequence[Mapping[str, Tensor]], device: torch.device) -> float:
        """Average number of target masks per rank, clamped ≥ 1 (spec §3.3)."""
        num_masks = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
        return torch.clamp(num_masks / _world_size(), min=1).item()

    def forward(
        self,
        outputs: Any,
        targets: Sequence[Mapping[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted losses of the final prediction and of every aux prediction.

        Args:
            outputs: mapping (or object) with ``pred_logits`` (B, Q, K+1), ``pred_masks``
                (B, Q, H/4, W/4) and optionally ``aux_outputs``, a list of mappings with the same two keys.
            targets: one dict per image: ``labels`` (N_b,) int64 in [0, K), ``masks`` (N_b, H, W) at the
                padded input resolution; N_b may be 0.
            generator: optional RNG for every random point draw (matching and losses).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` and, for aux prediction i, the same keys suffixed
            ``_i``.
        """
        pred_logits: Tensor = output_field(outputs, "pred_logits")
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {pred_logits.shape[0]} predictions")
        self._check_targets(targets)
        num_masks = self.get_num_masks(targets, pred_logits.device)

        losses = self._losses(outputs, targets, num_masks, generator)
        if isinstance(outputs, Mapping):
            aux_outputs = outputs.get("aux_outputs")
        else:
            aux_outputs = getattr(outputs, "aux_outputs", None)
        for i, aux in enumerate(aux_outputs or []):
            aux_losses = self._losses(aux, targets, num_masks, generator)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def weighted(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each loss times its weight.

        Unlike the official training loop, which silently drops losses missing from ``weight_dict``, a loss
        without a weight raises ``KeyError``: a weight dict built for fewer aux layers than the model has
        would otherwise train the extra layers without supervision.
        """
        missing = sorted(set(losses) - set(self.weight_dict))
        if missing:
            raise KeyError(
                f"no weight for losses {missing}; build weight_dict for the model's number of aux outputs"
            )
        return {k: v * self.weight_dict[k] for k, v in losses.items()}

    def total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Σ weight · loss over every loss term (what the optimiser minimises)."""
        weighted = self.weighted(losses)
        if not weighted:
            raise ValueError("no losses to sum")
        return torch.stack(list(weighted.values())).sum()

    def _check_targets(self, targets: Sequence[Mapping[str, Tensor]]) -> None:
        # Points are normalised to the target's own extent, so targets of different sizes would be read at
        # different image positions: they must all be at the padded batch resolution (spec §3.1).
        sizes = {tuple(t["masks"].shape[-2:]) for t in targets}
        if len(sizes) > 1:
            raise ValueError(
                f"target masks have different sizes {sorted(sizes)}; pad them to the padded batch size "
                "(semantic_targets(..., pad_to=...))"
            )
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.shape[0] != target["masks"].shape[0]:
                raise ValueError(f"target {b}: {labels.shape[0]} labels but {target['masks'].shape[0]} masks")
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(
                    f"target {b}: labels must lie in [0, {self.num_classes}), got "
                    f"[{int(labels.min())}, {int(labels.max())}]"
                )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, num_points={self.num_points}, "
            f"oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}"
        )
