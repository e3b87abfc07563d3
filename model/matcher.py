"""Hungarian matcher between predicted masks and ground-truth masks (spec §3.2).

Matching is per image and carries no gradient. For image b with Q queries and N_b targets:

    C[q, j] = cost_class · (−softmax(logits)[q, label_j])
            + cost_mask  · mean_points BCE(mask_q, target_j)
            + cost_dice  · dice(mask_q, target_j)

Both mask costs are evaluated at one set of ``num_points`` uniform random points shared by every query and
target of the image (read with ``point_sample``), in fp32 with autocast off. The assignment minimising the
sum of C over matched pairs comes from ``scipy.optimize.linear_sum_assignment``; with Q ≥ N_b every target
gets exactly one query.

Differences from the official code (M: mask2former/modeling/matcher.py): a cost matrix holding NaN or inf
raises ``ValueError`` (the official code prints and lets scipy fail), images without targets get an empty
assignment without sampling, and an optional ``torch.Generator`` makes the point draws reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .point_sample import point_sample, rand_points

Indices = list[tuple[Tensor, Tensor]]


def output_field(outputs: Any, key: str) -> Any:
    """Read ``key`` from model outputs given as a mapping or as an object with attributes."""
    if isinstance(outputs, Mapping):
        return outputs[key]
    return getattr(outputs, key)


def batch_dice_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice cost: 1 − (2·Σσ(p)t + 1) / (Σσ(p) + Σt + 1).

    Args:
        inputs: (Q, P) mask logits at P points.
        targets: (N, P) binary (or soft) targets at the same points.

    Returns:
        (Q, N) cost.
    """
    inputs = inputs.sigmoid()  # (Q, P)
    numerator = 2 * torch.einsum("qp,np->qn", inputs, targets)  # (Q, N)
    denominator = inputs.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (Q, N)
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise mean binary cross-entropy with logits.

    BCE(x, t) = t·BCE(x, 1) + (1 − t)·BCE(x, 0), so all pairs come from two matrix products.

    Args:
        inputs: (Q, P) mask logits at P points.
        targets: (N, P) targets in [0, 1] at the same points.

    Returns:
        (Q, N) mean over points of BCE-with-logits.
    """
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")  # (Q, P)
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")  # (Q, P)
    loss = torch.einsum("qp,np->qn", pos, targets) + torch.einsum("qp,np->qn", neg, 1 - targets)  # (Q, N)
    return loss / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets by minimum total cost (spec §3.2).

    Args:
        cost_class: weight of the classification cost (the class loss weight, 2.0).
        cost_mask: weight of the point-sampled BCE cost (the mask loss weight, 5.0).
        cost_dice: weight of the point-sampled dice cost (the dice loss weight, 5.0).
        num_points: uniform random points per image (112 × 112 = 12544).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matcher costs are 0")
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def image_cost(
        self,
        logits: Tensor,
        masks: Tensor,
        labels: Tensor,
        target_masks: Tensor,
        point_coords: Tensor,
    ) -> Tensor:
        """Cost matrix of one image at given points.

        Args:
            logits: (Q, K+1) class logits, last column = no-object.
            masks: (Q, h, w) mask logits (1/4 resolution).
            labels: (N,) target class ids.
            target_masks: (N, H, W) binary target masks at the padded input resolution.
            point_coords: (P, 2) points in [0, 1]² as (x, y), shared by every query and target.

        Returns:
            (Q, N) cost in fp32 on the device of ``logits``.
        """
        prob = logits.float().softmax(-1)  # (Q, K+1)
        cost_class = -prob[:, labels.to(prob.device)]  # (Q, N)

        target_masks = target_masks.to(device=masks.device, dtype=masks.dtype)
        points = point_coords[None].to(masks.device)  # (1, P, 2)
        # (Q, 1, h, w) sampled at P points -> (Q, P); same for the targets -> (N, P).
        out_points = point_sample(masks[:, None], points.expand(masks.shape[0], -1, -1)).squeeze(1)
        tgt_points = point_sample(
            target_masks[:, None], points.expand(target_masks.shape[0], -1, -1)
        ).squeeze(1)

        device_type = masks.device.type if masks.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            out_points = out_points.float()
            tgt_points = tgt_points.float()
            cost_mask = batch_sigmoid_ce_loss(out_points, tgt_points)  # (Q, N)
            cost_dice = batch_dice_loss(out_points, tgt_points)  # (Q, N)

        return (
            self.cost_mask * cost_mask
            + self.cost_class * cost_class.to(cost_mask.device)
            + self.cost_dice * cost_dice
        )

    @torch.no_grad()
    def cost_matrices(
        self,
        outputs: Any,
        targets: Sequence[Mapping[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Per-image cost matrices (Q, N_b) on the CPU, with freshly drawn points for each image.

        Images without targets get a (Q, 0) matrix and consume no random numbers.
        """
        pred_logits: Tensor = output_field(outputs, "pred_logits")  # (B, Q, K+1)
        pred_masks: Tensor = output_field(outputs, "pred_masks")  # (B, Q, h, w)
        batch, num_queries = pred_logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch} predictions")

        costs = []
        for b, target in enumerate(targets):
            labels, target_masks = target["labels"], target["masks"]
            if labels.shape[0] != target_masks.shape[0]:
                raise ValueError(f"target {b}: {labels.shape[0]} labels but {target_masks.shape[0]} masks")
            if labels.numel() == 0:
                costs.append(torch.zeros(num_queries, 0))
                continue
            points = rand_points(1, self.num_points, device=pred_masks.device, generator=generator)[0]
            cost = self.image_cost(pred_logits[b], pred_masks[b], labels, target_masks, points)
            if not torch.isfinite(cost).all():
                raise ValueError(
                    f"Hungarian matcher: the cost matrix of image {b} holds NaN or inf "
                    f"(pred_logits finite: {bool(torch.isfinite(pred_logits[b]).all())}, "
                    f"pred_masks finite: {bool(torch.isfinite(pred_masks[b]).all())}); "
                    "the model's predictions have diverged or the inputs contain NaN"
                )
            costs.append(cost.reshape(num_queries, -1).cpu())
        return costs

    @torch.no_grad()
    def forward(
        self,
        outputs: Any,
        targets: Sequence[Mapping[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> Indices:
        """Match one prediction set to the targets.

        Args:
            outputs: mapping (or object) with ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, h, w).
            targets: one dict per image with ``labels`` (N_b,) and ``masks`` (N_b, H, W).
            generator: optional RNG for the sampled points.

        Returns:
            One ``(query_idx, target_idx)`` pair of int64 CPU tensors per image, each of length
            min(Q, N_b); ``query_idx`` is increasing.
        """
        indices = []
        for cost in self.cost_matrices(outputs, targets, generator=generator):
            if cost.shape[1] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}"
        )
