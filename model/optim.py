"""Optimiser, learning-rate schedule and gradient clipping of the official recipe (spec §3.4).

- :func:`build_param_groups`: AdamW parameter groups as Mask2Former's ``train_net.py:203-225`` builds them —
  LR × ``backbone_multiplier`` for every parameter of a module whose name contains ``"backbone"``; weight
  decay 0 for the parameters of norm layers (BN, SyncBN, GN, LN, …), of ``nn.Embedding`` modules and for
  Swin's ``relative_position_bias_table`` / ``absolute_pos_embed``; everything else (biases included) keeps
  the base weight decay. The pixel decoder's ``transformer.level_embed`` is a raw ``nn.Parameter`` of a
  non-embedding module, so it keeps the weight decay, exactly as in the official code.
- :class:`WarmupPolyLR`: ``lr = base · warmup(it) · (1 − it / max_iter)^power`` (detectron2 DeepLab's
  ``WarmupPolyLR``), a ``LambdaLR`` factor, so the schedule is a pure function of the iteration and a
  resumed run recomputes the same value.
- :func:`clip_grad_norm_full_model`: detectron2's ``CLIP_TYPE: full_model`` — one L2 norm over every
  gradient of the model, scaled down to ``max_norm`` (0.01 in the official configs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_TYPES",
    "WarmupPolyLR",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "clip_grad_norm_full_model",
    "freeze_backbone",
]

# detectron2's ``norm_module_types`` (D: detectron2/solver/build.py): every layer whose parameters are an
# affine transform of normalised activations. FrozenBatchNorm2d holds buffers only, so it needs no entry.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

# Swin parameters that are position tables, not weights (F: train_net.py:214-217).
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


@dataclass(frozen=True)
class _GroupKey:
    lr: float
    weight_decay: float
    name: str


def build_param_groups(
    model: nn.Module,
    base_lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> list[dict[str, Any]]:
    """Parameter groups of the official optimiser (spec §3.4).

    The official code makes one group per parameter; here parameters with the same (lr, weight_decay) are
    merged into one group (same update, far fewer groups), in order of first appearance. Each group carries a
    ``"name"`` (``backbone`` / ``head`` + ``decay`` / ``no_decay``) for logs. Frozen parameters
    (``requires_grad=False``) and parameters shared between modules (counted once) are skipped, as in
    detectron2.

    Returns:
        A list of ``{"params": [...], "lr": float, "weight_decay": float, "name": str}`` for ``torch.optim``.
    """
    seen: set[int] = set()
    groups: dict[_GroupKey, list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = base_lr
            wd = weight_decay
            part = "head"
            if "backbone" in module_name:
                lr = base_lr * backbone_multiplier
                part = "backbone"
            if any(key in param_name for key in _NO_DECAY_NAMES):
                wd = 0.0
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            if isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            key = _GroupKey(lr, wd, f"{part}/{'decay' if wd else 'no_decay'}")
            groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr": k.lr, "weight_decay": k.weight_decay, "name": k.name} for k, params in groups.items()
    ]


def build_optimizer(
    model: nn.Module,
    base_lr: float = 1e-4,
    weight_decay: float = 0.05,
    backbone_multiplier: float = 0.1,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW (PyTorch default betas and eps) over :func:`build_param_groups`."""
    groups = build_param_groups(
        model, base_lr, weight_decay, backbone_multiplier, weight_decay_norm, weight_decay_embed
    )
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=base_lr, weight_decay=weight_decay)


class WarmupPolyLR:
    """LR factor at iteration ``it``: ``warmup(it) · (1 − it / max_iter)^power`` (a ``LambdaLR`` lambda).

    Args:
        max_iter: total iterations; the factor reaches 0 at ``max_iter``.
        power: 0.9 in the official configs.
        warmup_iters: linear (or constant) warm-up length; 0 = none (official).
        warmup_factor: factor at iteration 0 of the warm-up (detectron2 ``WARMUP_FACTOR``).
        warmup_method: ``"linear"`` (factor → 1 linearly over the warm-up) or ``"constant"``.
        constant_ending: once the poly factor falls below this value, hold it (detectron2
            ``POLY_LR_CONSTANT_ENDING``; 0 = off, the official value).

    A plain object (not a closure) so ``LambdaLR.state_dict()`` records its settings.
    """

    def __init__(
        self,
        max_iter: int,
        power: float = 0.9,
        warmup_iters: int = 0,
        warmup_factor: float = 1.0,
        warmup_method: str = "linear",
        constant_ending: float = 0.0,
    ) -> None:
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        if warmup_iters < 0 or warmup_iters > max_iter:
            raise ValueError(f"warmup_iters must lie in [0, max_iter={max_iter}], got {warmup_iters}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"warmup_method must be 'linear' or 'constant', got {warmup_method!r}")
        self.max_iter = int(max_iter)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_method = warmup_method
        self.constant_ending = float(constant_ending)

    def warmup(self, it: int) -> float:
        if it >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = it / self.warmup_iters
        return self.warmup_factor * (1 - alpha) + alpha

    def __call__(self, it: int) -> float:
        poly = (1.0 - min(it, self.max_iter) / self.max_iter) ** self.power
        warm = self.warmup(it)
        if self.constant_ending > 0 and warm == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warm * poly


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_iter: int,
    power: float = 0.9,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0,
    warmup_method: str = "linear",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly schedule (with optional warm-up) stepped once per iteration; group LRs keep their multipliers."""
    factor = WarmupPolyLR(max_iter, power, warmup_iters, warmup_factor, warmup_method)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_grad_norm_full_model(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale every gradient by one factor so their joint L2 norm is ≤ ``max_norm`` (detectron2 full_model).

    ``max_norm <= 0`` disables clipping. Returns the total norm before clipping (for logs). When it is inf or
    NaN the gradients are unusable (clipping scales them by 0 or NaN): the caller must skip the step, as
    ``GradScaler.step`` does for fp16, or stop.
    """
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    if max_norm <= 0 or math.isinf(max_norm):
        norms = torch.stack([p.grad.detach().float().norm(2) for p in params])
        return norms.norm(2)
    return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2.0, error_if_nonfinite=False)


def freeze_backbone(model: nn.Module) -> int:
    """Stop gradients to every backbone parameter (``model.backbone``); returns how many were frozen.

    Batch-norm statistics are frozen too by keeping the backbone in eval mode; the training loop calls
    ``model.backbone.eval()`` after every ``model.train()`` when the backbone is frozen.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError("the model has no `backbone` attribute to freeze")
    count = 0
    for p in backbone.parameters():
        if p.requires_grad:
            p.requires_grad_(False)
            count += 1
    return count
