"""What the training loop drives, built from a :class:`~faseg.model.recipes.TrainConfig`.

:class:`Trainer` holds the model (wrapped in ``DistributedDataParallel`` in a process group; ``model_without_ddp``
as in torchvision's references), the criterion, optimiser, schedule, gradient scaler and the criterion's
random generator; :func:`build_trainer` makes them with the official recipe (spec §3.2–3.4). The model itself
comes from the preset (:func:`resolve_model_config`), optionally initialised by ``--init``
(:mod:`faseg.model.convert.init_weights`); the datasets of a run and its micro-batch size from the config
(:func:`load_train_data`, :func:`micro_batch_size`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .criterion import SetCriterion, build_weight_dict
from .data import build_dataset
from .data.loader import build_train_dataset
from .data.transforms import TransformedDataset
from .distributed import DistInfo, amp_dtype
from .faseg import FASeg
from .focus import focus_weight_dict
from .matcher import HungarianMatcher
from .optim import build_optimizer, build_scheduler, freeze_backbone
from .presets import get_preset
from .recipes import DataRecipe, TrainConfig, data_recipe

__all__ = [
    "TrainData",
    "Trainer",
    "build_criterion",
    "build_trainer",
    "load_train_data",
    "micro_batch_size",
    "resolve_model_config",
]


@dataclass
class Trainer:
    """The objects one optimisation step uses (:func:`faseg.model.train.train_one_step`)."""

    model: nn.Module  # what runs forward/backward: a DistributedDataParallel wrapper in a process group
    model_without_ddp: FASeg  # the model itself: its state is saved, evaluated and exported
    criterion: nn.Module  # SetCriterion: __call__(outputs, targets, generator=) -> losses; total(losses)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the criterion's point sampling (saved with the RNG state)
    device: torch.device
    amp_dtype: torch.dtype | None  # None: no autocast
    clip_grad: float  # full-model gradient-norm clip; 0 = off
    freeze_backbone: bool  # keep the backbone in eval mode (frozen BatchNorm statistics)


def build_trainer(cfg: TrainConfig, model: FASeg, info: DistInfo, generator: torch.Generator) -> Trainer:
    """Freeze the backbone if asked, move ``model`` to the device, wrap it for DDP, and build the criterion,
    AdamW with its parameter groups, the poly schedule and the gradient scaler of ``cfg`` (spec §3.4)."""
    device = info.device
    if cfg.freeze_backbone:
        freeze_backbone(model)
    model.to(device)
    model.train()
    wrapped: nn.Module = model
    if info.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    criterion = build_criterion(cfg, model.cfg).to(device)
    optimizer = build_optimizer(
        model, cfg.lr, cfg.weight_decay, cfg.backbone_multiplier, cfg.weight_decay_norm, cfg.weight_decay_embed
    )
    scheduler = build_scheduler(optimizer, cfg.max_iter, cfg.poly_power, cfg.warmup_iters, cfg.warmup_factor)
    dtype = amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Trainer(
        model=wrapped,
        model_without_ddp=model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        generator=generator,
        device=device,
        amp_dtype=dtype,
        clip_grad=cfg.clip_grad,
        freeze_backbone=cfg.freeze_backbone,
    )


def resolve_model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
    """Preset + overrides; the class count comes from the dataset unless --set num_classes says otherwise."""
    model_cfg = get_preset(cfg.preset, cfg.overrides)
    explicit = any(o.split("=", 1)[0].strip() == "num_classes" for o in cfg.overrides)
    if model_cfg.num_classes != num_classes:
        if explicit:
            raise ValueError(
                f"--set num_classes={model_cfg.num_classes} but the training set {cfg.data} has {num_classes} classes"
            )
        model_cfg = dataclasses.replace(model_cfg, num_classes=num_classes)
    return model_cfg


def build_criterion(cfg: TrainConfig, model_cfg: ModelConfig) -> SetCriterion:
    """SetCriterion with the official weights; one aux loss set per decoder layer (spec §3.3)."""
    matcher = HungarianMatcher(cfg.class_weight, cfg.mask_weight, cfg.dice_weight, num_points=cfg.num_points)
    weights = build_weight_dict(model_cfg.decoder.dec_layers, cfg.class_weight, cfg.mask_weight, cfg.dice_weight)
    weights.update(focus_weight_dict(model_cfg.pixel_decoder.focus))  # {} unless the Focus encoder is on
    return SetCriterion(
        model_cfg.num_classes,
        matcher,
        weights,
        eos_coef=cfg.no_object_weight,
        num_points=cfg.num_points,
        oversample_ratio=cfg.oversample_ratio,
        importance_sample_ratio=cfg.importance_sample_ratio,
    )


@dataclass
class TrainData:
    """The datasets of a run and what the model config and the evaluation take from them."""

    train_set: TransformedDataset
    val_set: Any  # a dataset of build_dataset(..., "val"), or None
    model_cfg: ModelConfig
    classes: list[str]
    palette: list[tuple[int, ...]]
    recipe: DataRecipe


def load_train_data(cfg: TrainConfig, resume_state: dict[str, Any] | None) -> TrainData:
    """Datasets and model config. On resume the saved model config wins, so the architecture cannot drift
    (nanoGPT)."""
    raw = build_dataset(cfg.data, split="train")
    model_cfg = resolve_model_config(cfg, raw.num_classes)
    if resume_state is not None:
        model_cfg = ModelConfig.from_dict(resume_state["model_config"])
    train_set = build_train_dataset(cfg, model_cfg, raw)
    val_set = build_dataset(cfg.val_data, split="val") if cfg.val_data else None
    if val_set is not None and val_set.num_classes != model_cfg.num_classes:
        raise ValueError(
            f"--val-data {cfg.val_data} has {val_set.num_classes} classes, the model {model_cfg.num_classes}"
        )
    recipe = data_recipe(cfg.val_data or cfg.data, model_cfg.default_input_size)
    return TrainData(train_set, val_set, model_cfg, list(raw.classes), [tuple(p) for p in raw.palette], recipe)


def micro_batch_size(cfg: TrainConfig, info: DistInfo) -> int:
    """Images per micro-batch of each process: ``batch_size / (world_size · accum_steps)``, which must divide."""
    micro, rem = divmod(cfg.batch_size, info.world_size * cfg.accum_steps)
    if rem or micro == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} must be a multiple of processes × accumulation steps "
            f"({info.world_size} × {cfg.accum_steps})"
        )
    return micro
