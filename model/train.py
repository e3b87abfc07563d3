"""Training: the official recipe (spec §3) in one iteration-based loop, resumable and torchrun-ready.

Shaped like torchvision's ``references/segmentation/train.py`` (``train_one_step`` / ``evaluate`` / ``main``,
``model_without_ddp``, ``sampler.set_epoch``) but counted in iterations like detectron2. Launch::

    faseg train --preset faseg_tiny --data synthetic:train --val-data synthetic:val --out runs/tiny
    torchrun --nproc_per_node 2 -m faseg train ...        # DDP: gloo on CPU, nccl on GPU (found from RANK)

Call order of :func:`main` (what happens when, as in detectron2's ``HookBase`` docstring)::

    setup_distributed()                      # torchrun env (RANK, WORLD_SIZE, LOCAL_RANK) or one process
    seed_everything(seed + rank)             # python, numpy, torch; deterministic mode when asked
    build datasets → model (--init weights) → DDP wrap → optimizer → scheduler → scaler
    if --resume and OUT/last exists: load_training_state()   # model, optimiser, scheduler, scaler, RNG,
                                                              # criterion generator, iteration, data position
    for iteration in [start, max_iter):
        micro_batches = next(loader) × accum_steps           # InfiniteLoader: set_epoch() at each epoch
        train_one_step(...)                                   # forward → loss → backward (grads all-reduced
                                                              # on the last micro-batch only) → unscale →
                                                              # clip → optimizer.step → scheduler.step
        every log_period:        metrics.jsonl (+ TensorBoard), progress bar
        every eval_period:       evaluate() on the val set → metrics.jsonl → OUT/best/ when mIoU improves
        step_callback(iteration, metrics)                     # tests: raise = crash, True = stop
        every checkpoint_period (or stop): save_training_state(OUT/last/)   # after eval: knows the best mIoU
    save_pretrained(OUT/final/)

Output directory::

    OUT/last/state.pt          model, optimizer, scheduler, scaler, iteration, data position, configs
    OUT/last/rng-rank{r}.pt    python / numpy / torch (/ cuda) RNG and the criterion's generator, per rank
    OUT/best/                  our model format (save_pretrained) at the best val mIoU
    OUT/final/                 our model format at the end of training
    OUT/metrics.jsonl          one JSON object per logged iteration and per evaluation

Checkpoints are written into a temporary directory and renamed into place, so a crash while writing leaves
the previous ``last/`` intact. In deterministic mode on the CPU a resumed run is bit-identical to an
uninterrupted one (test: ``tests/model/test_train.py``).

Batch size is the *total* per optimiser step (detectron2 ``IMS_PER_BATCH``, 16 in the official configs):
each process loads ``batch_size / (world_size · accum_steps)`` images per micro-batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import CheckpointError, read_checkpoint_info, save_pretrained
from .config import ModelConfig
from .convert.init_weights import init_model
from .criterion import SetCriterion, build_weight_dict
from .data import build_dataset
from .data.transforms import Batch, TransformedDataset, build_test_transform, build_train_transforms, collate
from .evaluation import SemSegEvaluator, multiscale_flip_probs
from .faseg import FASeg, build_model
from .focus import focus_loss, focus_weight_dict
from .inference import semantic_inference
from .matcher import HungarianMatcher
from .optim import build_optimizer, build_scheduler, clip_grad_norm_full_model, freeze_backbone
from .presets import get_preset

__all__ = [
    "DataRecipe",
    "DistInfo",
    "InfiniteLoader",
    "TrainConfig",
    "build_criterion",
    "data_recipe",
    "evaluate",
    "load_init_weights",
    "load_training_state",
    "main",
    "save_training_state",
    "seed_everything",
    "setup_distributed",
    "train_one_step",
]

AmpMode = Literal["auto", "off", "fp16", "bf16"]
STATE_NAME = "state.pt"
LAST_DIR = "last"
BEST_DIR = "best"
FINAL_DIR = "final"
METRICS_NAME = "metrics.jsonl"


# ---------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Everything a training run needs. Defaults are the official ADE20K recipe (spec §3.4–3.5) unless noted.

    ``None`` in a data field means "the default of the dataset kind" (:func:`data_recipe`).
    """

    # What to train, on what, where.
    preset: str = "faseg_r50_ade20k"
    overrides: list[str] = field(default_factory=list)  # --set key=value on the model config
    data: str = "synthetic:train"  # KIND:PATH (faseg.model.data.build_dataset), split "train"
    val_data: str | None = None  # KIND:PATH, split "val"; None = no periodic evaluation
    out: str = "runs/faseg"
    init: str | None = None  # initial weights: faseg dir, detectron2 .pth/.pkl or HF dir (convert.init_weights)
    resume: bool = False  # continue from OUT/last when it exists

    # Schedule.
    max_iter: int = 160_000  # ADE20K 160k, Cityscapes 90k
    batch_size: int = 16  # total images per optimiser step (all processes, all accumulation steps)
    accum_steps: int = 1  # gradient accumulation: micro-batches per optimiser step

    # Optimiser (spec §3.4).
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1  # meant for an ImageNet-initialised backbone
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    clip_grad: float = 0.01  # full-model L2 norm; 0 = off
    poly_power: float = 0.9
    warmup_iters: int = 0  # official: no warm-up
    warmup_factor: float = 1.0
    freeze_backbone: bool = False
    # AMP: "auto" = fp16 on CUDA (official), off on the CPU. The pixel decoder always runs in fp32.
    amp: AmpMode = "auto"

    # Loss (spec §3.2–3.3).
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75

    # Training data (None: the dataset kind's default, see data_recipe).
    crop_size: tuple[int, int] | None = None
    short_edge_choices: tuple[int, ...] | None = None
    max_long: int | None = None
    pad_to_crop: bool | None = None
    photometric: bool = True
    flip: bool = True
    num_workers: int = 2

    # Evaluation.
    eval_period: int = 5000  # official ADE20K value; 0 = only at the end (when val_data is set)
    eval_limit: int | None = None  # evaluate the first N val images only
    eval_batch_size: int = 1  # official: 1 (padding a mixed-size batch changes the prediction)

    # Bookkeeping.
    checkpoint_period: int = 5000
    log_period: int = 20
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True

    def validate(self) -> None:
        if self.max_iter <= 0:
            raise ValueError(f"max_iter (--iters) must be positive, got {self.max_iter}")
        if self.batch_size <= 0 or self.accum_steps <= 0:
            raise ValueError(f"batch_size and accum_steps must be positive, got {self.batch_size}, {self.accum_steps}")
        if self.amp not in ("auto", "off", "fp16", "bf16"):
            raise ValueError(f"amp must be auto, off, fp16 or bf16, got {self.amp!r}")
        for name in ("eval_period", "checkpoint_period", "log_period", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataRecipe:
    """Augmentation and test-time sizes of one dataset kind (spec §3.5, §3.7, §4)."""

    crop_size: tuple[int, int]
    short_edge_choices: tuple[int, ...]
    max_long: int | None
    pad_to_crop: bool
    test_short_edge: int | None  # None: evaluate at the native image size
    test_max_long: int | None
    tta_scales: tuple[int, ...]
    tta_max_long: int | None


def data_recipe(spec: str, input_size: tuple[int, int]) -> DataRecipe:
    """Official defaults for ``ade20k`` and ``cityscapes``; for ``folder`` / ``synthetic`` the ADE20K recipe
    scaled to the model's input size (short side 0.5–2.0× of the crop in 16 steps, crop = input size, pad)."""
    kind = spec.partition(":")[0].strip().lower()
    if kind == "ade20k":  # spec §3.5, §4.1, §4.7
        return DataRecipe(
            crop_size=(512, 512),
            short_edge_choices=tuple(int(x * 0.1 * 512) for x in range(5, 21)),
            max_long=2048,
            pad_to_crop=True,
            test_short_edge=512,
            test_max_long=2048,
            tta_scales=(256, 384, 512, 640, 768, 896),
            tta_max_long=3584,
        )
    if kind == "cityscapes":  # spec §3.7, §4.1, §4.7
        return DataRecipe(
            crop_size=(512, 1024),
            short_edge_choices=tuple(int(x * 0.1 * 1024) for x in range(5, 21)),
            max_long=4096,
            pad_to_crop=False,
            test_short_edge=1024,
            test_max_long=2048,
            tta_scales=(512, 768, 1024, 1280, 1536, 1792),
            tta_max_long=4096,
        )
    h, w = input_size
    base = min(h, w)
    return DataRecipe(
        crop_size=(h, w),
        short_edge_choices=tuple(int(x * 0.1 * base) for x in range(5, 21)),
        max_long=4 * max(h, w),
        pad_to_crop=True,
        test_short_edge=None,
        test_max_long=None,
        tta_scales=tuple(int(base * s) for s in (0.75, 1.0, 1.25, 1.5)),
        tta_max_long=4 * max(h, w),
    )


# ---------------------------------------------------------------------------------------------------------
# Processes, devices, seeds


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup_distributed(
    device: str = "auto", *, rank: int | None = None, world_size: int | None = None, init_method: str | None = None
) -> DistInfo:
    """Join the process group: from explicit ``rank`` / ``world_size`` / ``init_method`` (tests, spawn), from
    torchrun's environment (``RANK`` is set), or not at all (one process). Backend: nccl on CUDA, gloo on CPU.
    An already initialised group is reused."""
    if rank is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        init_method = init_method or "env://"
    local_rank = int(os.environ.get("LOCAL_RANK", rank or 0)) if rank is not None else 0
    dev = _resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if rank is None or world_size is None:
        return DistInfo(0, 1, 0, dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally switch torch to deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (must be set before the first cuBLAS call).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        # grid_sample's CUDA backward has no deterministic kernel: warn there instead of failing. On the
        # CPU every op used here is deterministic, which is what the exact-resume guarantee relies on.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if mode == "auto":
        return torch.float16 if device.type == "cuda" else None
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode == "bf16":
            return torch.bfloat16  # CPU autocast supports bf16 (fp16 autocast on CPU is not worth it)
        raise ValueError(f"AMP {mode} needs a CUDA device (use --amp bf16 or off on the CPU)")
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --amp fp16")
    return torch.bfloat16 if mode == "bf16" else torch.float16


# ---------------------------------------------------------------------------------------------------------
# Data


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch from ``seed + epoch``) that can start mid-epoch."""

    start_index: int = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class InfiniteLoader:
    """Endless micro-batches: epoch after epoch, each reshuffled (``sampler.set_epoch``) and re-augmented
    (``dataset.set_epoch``); ``position`` = (epoch, micro-batches consumed in it) for checkpoints.

    Args:
        dataset: a :class:`TransformedDataset`.
        micro_batch: images per micro-batch of this process.
        rank / world_size: the shard of this process.
        seed: shuffling seed (shared by every process).
        start: (epoch, micro-batches already consumed in that epoch) to resume from.
    """

    def __init__(
        self,
        dataset: TransformedDataset,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Batch],
        start: tuple[int, int] = (0, 0),
    ):
        self.dataset = dataset
        self.micro_batch = micro_batch
        self.sampler = ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = self.sampler.num_samples // micro_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(dataset)} images, fewer than one micro-batch of {micro_batch} per "
                f"process × {world_size} processes; lower --batch or add images"
            )
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.position = start

    def __iter__(self) -> Iterator[Batch]:
        epoch, consumed = self.position
        while True:
            if consumed >= self.batches_per_epoch:
                epoch, consumed = epoch + 1, 0
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)  # before the iterator exists: workers copy the dataset
            self.sampler.start_index = consumed * self.micro_batch
            loader = DataLoader(
                self.dataset,
                batch_size=self.micro_batch,
                sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                drop_last=True,
                # Its own generator: creating an iterator draws a base seed, which must not consume the
                # global torch RNG (a resumed run creates its iterator at a different time).
                generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
                persistent_workers=False,
            )
            batches = iter(loader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (ValueError, FileNotFoundError) as exc:
                    raise _worker_error(exc) from None
                consumed += 1
                self.position = (epoch, consumed)
                yield batch
            epoch, consumed = epoch + 1, 0


def _worker_error(exc: Exception) -> Exception:
    """A data error re-raised from a DataLoader worker carries the worker's whole traceback in its message;
    keep the last line (``ValueError: mask .../b.png has label values ...``) so the user sees the file."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    message = last.split(": ", 1)[1] if last.startswith(type(exc).__name__ + ":") else last
    return type(exc)(message)


def _collate_train(samples: list[Any]) -> Batch:
    return collate(samples)


def build_train_dataset(cfg: TrainConfig, model_cfg: ModelConfig, raw: Any) -> TransformedDataset:
    """``raw`` (from ``build_dataset(cfg.data, "train")``) with the training augmentations of its kind."""
    if len(raw) == 0:
        raise ValueError(f"empty dataset: {cfg.data}")
    recipe = data_recipe(cfg.data, model_cfg.default_input_size)
    crop = tuple(cfg.crop_size or recipe.crop_size)
    transform = build_train_transforms(
        crop_size=crop,
        short_edge_choices=list(cfg.short_edge_choices or recipe.short_edge_choices),
        max_long=cfg.max_long if cfg.max_long is not None else recipe.max_long,
        pad_to="crop" if (recipe.pad_to_crop if cfg.pad_to_crop is None else cfg.pad_to_crop) else None,
        photometric=cfg.photometric,
        flip=cfg.flip,
    )
    return TransformedDataset(raw, transform, seed=cfg.seed)


def _resolve_model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
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


# ---------------------------------------------------------------------------------------------------------
# Model, criterion, initial weights


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


_CLASS_HEAD_PREFIX = "sem_seg_head.predictor.class_embed."


def load_init_weights(model: nn.Module, source: str) -> list[str]:
    """Initialise ``model`` from a faseg checkpoint directory (fine-tuning).

    Every tensor must match by name and shape, except the class head (``class_embed``) when the class
    counts differ: it keeps its fresh initialisation. Returns the list of tensors that were not loaded (for
    the log); anything else that does not match raises :class:`CheckpointError` naming the keys.
    """
    from safetensors.torch import load_file

    from .checkpoint import WEIGHTS_NAME

    path = Path(source)
    if not (path.is_dir() and (path / "config.json").is_file()):
        raise CheckpointError(
            f"--init {source}: not a faseg checkpoint directory (config.json + {WEIGHTS_NAME}); convert other "
            "checkpoints first"
        )
    read_checkpoint_info(path)  # validates config.json
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    state = load_file(str(weights))
    own = model.state_dict()
    skipped = sorted(
        k for k in set(own) & set(state) if k.startswith(_CLASS_HEAD_PREFIX) and own[k].shape != state[k].shape
    )
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{weights}: weights do not fit the model (missing: {missing[:8]}, unexpected: {unexpected[:8]}, "
            f"shape mismatch: {mismatched[:8]})"
        )
    model.load_state_dict(state, strict=False)
    return skipped


# ---------------------------------------------------------------------------------------------------------
# One optimisation step


def train_one_step(
    model: nn.Module,
    criterion: SetCriterion,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    micro_batches: Sequence[Batch],
    *,
    device: torch.device,
    clip_grad: float = 0.01,
    amp_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimiser step over ``micro_batches`` (gradient accumulation when there are several).

    Order: zero grads → for each micro-batch: forward (autocast) → criterion → backward of loss / n (DDP
    all-reduces only on the last micro-batch; ``no_sync`` before) → unscale (fp16) → clip the full-model norm
    → ``scaler.step`` (skipped by the scaler on inf / NaN fp16 grads) → ``scheduler.step``.

    Raises ``FloatingPointError`` when a loss is not finite (as detectron2 does).

    Returns:
        ``loss`` (weighted total, mean over micro-batches), the final prediction's ``loss_ce`` /
        ``loss_mask`` / ``loss_dice`` (unweighted), ``grad_norm`` (before clipping) and ``lr`` (of the first
        parameter group, before the scheduler step).
    """
    n = len(micro_batches)
    if n == 0:
        raise ValueError("train_one_step needs at least one micro-batch")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {"loss": 0.0, "loss_ce": 0.0, "loss_mask": 0.0, "loss_dice": 0.0}
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    for i, batch in enumerate(micro_batches):
        batch = batch.to(device, non_blocking=True)
        # Gradients are all-reduced once per optimiser step, on the last micro-batch.
        sync = contextlib.nullcontext() if (not is_ddp or i == n - 1) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(batch.images)
                losses = criterion(outputs, batch.targets, generator=generator)
                if outputs.focus is not None:  # Focus encoder: supervise its token scores (model/focus.py)
                    losses.update(focus_loss(outputs.focus, batch.targets))
                loss = criterion.total(losses)
            if not torch.isfinite(loss):
                bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v)}
                raise FloatingPointError(f"loss became {float(loss)} (non-finite terms: {bad}); batch {batch.names}")
            scaler.scale(loss / n).backward()
        totals["loss"] += float(loss.detach()) / n
        for k in ("loss_ce", "loss_mask", "loss_dice"):
            totals[k] += float(losses[k].detach()) / n
    scaler.unscale_(optimizer)
    grad_norm = clip_grad_norm_full_model(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return {**totals, "grad_norm": float(grad_norm), "lr": float(lr)}


# ---------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def predict_scores(
    model: FASeg,
    images: list[np.ndarray],
    out_sizes: list[tuple[int, int]],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Semantic scores (K, H_out, W_out) per image, in the official order (spec §4): batch → pad to a
    multiple of 32 → forward → semantic_inference (crop the padding, resize to the output size)."""
    batch = collate([(im, None) for im in images], size_divisibility=model.cfg.size_divisibility)
    x = batch.images.to(device)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = model(x)
    padded = tuple(x.shape[-2:])
    scores = []
    for i, (size, out_size) in enumerate(zip(batch.image_sizes, out_sizes)):
        s = semantic_inference(
            out.pred_logits[i : i + 1].float(), out.pred_masks[i : i + 1].float(), padded, size, out_size
        )
        scores.append(s[0])
    return scores


@torch.no_grad()
def evaluate(
    model: FASeg,
    dataset: Any,
    device: torch.device,
    *,
    recipe: DataRecipe | None = None,
    tta: bool = False,
    batch_size: int = 1,
    limit: int | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``dataset`` (spec §4, detectron2 metrics).

    Test resize per ``recipe`` (short side, long-side cap; native size when ``recipe.test_short_edge`` is
    None), prediction resized back to the label size. ``tta``: multi-scale (``recipe.tta_scales``) + flip,
    averaged in probability space. Images are sharded over the ranks of an initialised process group and the
    confusion matrix is all-reduced, so every rank gets the same result.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise ValueError("empty evaluation dataset")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    indices = list(range(rank, n, world))
    test_tf = (
        build_test_transform(recipe.test_short_edge, recipe.test_max_long)
        if recipe and recipe.test_short_edge
        else None
    )
    evaluator = SemSegEvaluator(dataset.num_classes, list(dataset.classes), device="cpu")
    bar = tqdm(total=len(indices), desc="eval", disable=not progress, leave=False, dynamic_ncols=True)

    def probs_fn(image: torch.Tensor) -> torch.Tensor:  # (3, h, w) uint8 -> (K, h, w)
        hwc = image.permute(1, 2, 0).numpy()
        return predict_scores(model, [hwc], [hwc.shape[:2]], device, amp_dtype)[0].cpu()

    for start in range(0, len(indices), batch_size):
        samples = [dataset[i] for i in indices[start : start + batch_size]]
        if tta:
            if recipe is None:
                raise ValueError("tta needs a DataRecipe with tta_scales")
            for s in samples:
                probs = multiscale_flip_probs(probs_fn, s.image, recipe.tta_scales, True, recipe.tta_max_long)
                evaluator.process(probs, s.label)
        else:
            images = [test_tf(s.image)[0] if test_tf else s.image for s in samples]
            scores = predict_scores(model, images, [s.label.shape for s in samples], device, amp_dtype)
            for s, score in zip(samples, scores):
                evaluator.process(score.cpu(), s.label)
        bar.update(len(samples))
    bar.close()
    model.train(was_training)
    results = evaluator.evaluate()
    results["num_images"] = n
    return results


# ---------------------------------------------------------------------------------------------------------
# Training state checkpoints (atomic)


def _rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # numpy's legacy state without numpy objects, so torch.load(weights_only=True) can read it back
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["criterion"] = generator.get_state()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "criterion" in state:
        generator.set_state(state["criterion"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_training_state(out: Path, state: dict[str, Any], generator: torch.Generator | None, info: DistInfo) -> Path:
    """Write ``OUT/last/`` atomically: into ``OUT/.last.tmp-<iteration>/``, then renamed over ``last/``.

    Rank 0 writes ``state.pt``; every rank writes its own ``rng-rank{r}.pt``. Collective: every rank calls it.
    """
    final = out / LAST_DIR
    tmp = out / f".{LAST_DIR}.tmp-{state['iteration']}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    torch.save(_rng_state(generator), tmp / f"rng-rank{info.rank}.pt")
    if info.is_main:
        torch.save(state, tmp / STATE_NAME)
    _barrier()
    if info.is_main:
        old = out / f".{LAST_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)  # a directory cannot be renamed onto a non-empty one: move it aside first
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def find_last_state(out: Path) -> Path | None:
    """``OUT/last`` — or ``OUT/.last.old`` when a crash hit between the two renames of a save."""
    for name in (LAST_DIR, f".{LAST_DIR}.old"):
        if (out / name / STATE_NAME).is_file():
            return out / name
    return None


def load_training_state(directory: Path, generator: torch.Generator | None, info: DistInfo) -> dict[str, Any]:
    """Read ``state.pt`` and restore this rank's RNG (python, numpy, torch, criterion generator)."""
    try:
        state = torch.load(directory / STATE_NAME, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / truncated file: name it
        raise CheckpointError(f"{directory / STATE_NAME}: cannot read the training state ({exc})") from exc
    rng_file = directory / f"rng-rank{info.rank}.pt"
    if rng_file.is_file():
        _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True), generator)
    else:
        print(f"note: {rng_file} missing (more processes than the saved run); RNG seeded afresh", file=sys.stderr)
    return state


# ---------------------------------------------------------------------------------------------------------
# Logging


def _json_safe(value: Any) -> Any:
    """NaN / inf → None (strict JSON has no NaN; a class absent from the val set has NaN IoU)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) and, when the ``tensorboard`` package is installed,
    TensorBoard scalars in the same directory. Only the main process writes."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / METRICS_NAME
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")
        if self.tb is not None:
            prefix = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("iteration", "epoch") and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("iteration", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------------------------------------
# main


def _model_metadata(cfg: TrainConfig, iteration: int, extra: dict[str, Any]) -> dict[str, Any]:
    init_report = Path(cfg.out) / "init_report.json"  # what --init carried over (written at the run's start)
    return {
        "init": json.loads(init_report.read_text()) if init_report.is_file() else None,
        "trained_by": "faseg train",
        "preset": cfg.preset,
        "overrides": list(cfg.overrides),
        "data": cfg.data,
        "val_data": cfg.val_data,
        "iteration": iteration,
        "max_iter": cfg.max_iter,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        **extra,
    }


def main(
    cfg: TrainConfig,
    *,
    dist_info: DistInfo | None = None,
    step_callback: Callable[[int, dict[str, float]], bool | None] | None = None,
) -> dict[str, Any]:
    """Train per ``cfg`` (see the module docstring for the call order). Returns a summary dict.

    ``dist_info``: an already set-up process (tests spawn their own); default :func:`setup_distributed`.
    ``step_callback(iteration, metrics)``: called after every completed iteration, after evaluation and
    before the periodic checkpoint; returning True saves the training state and stops (an exception is a
    crash: the next ``--resume`` starts from the last periodic checkpoint).
    """
    cfg.validate()
    info = dist_info or setup_distributed(cfg.device)
    device = info.device
    seed_everything(cfg.seed + info.rank, cfg.deterministic)
    out = Path(cfg.out)
    last = find_last_state(out)
    if last is not None and not cfg.resume:
        raise ValueError(
            f"{out} already holds a training run ({last}); pass --resume to continue it or pick another --out"
        )
    resume_state: dict[str, Any] | None = None
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed + info.rank)
    if cfg.resume and last is not None:
        resume_state = load_training_state(last, generator, info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()

    # Data and model. On resume the saved model config wins, so the architecture cannot drift (nanoGPT).
    raw = build_dataset(cfg.data, split="train")
    model_cfg = _resolve_model_config(cfg, raw.num_classes)
    if resume_state is not None:
        model_cfg = ModelConfig.from_dict(resume_state["model_config"])
    train_set = build_train_dataset(cfg, model_cfg, raw)
    classes, palette = list(raw.classes), [tuple(p) for p in raw.palette]
    val_set = build_dataset(cfg.val_data, split="val") if cfg.val_data else None
    if val_set is not None and val_set.num_classes != model_cfg.num_classes:
        raise ValueError(
            f"--val-data {cfg.val_data} has {val_set.num_classes} classes, the model {model_cfg.num_classes}"
        )
    recipe = data_recipe(cfg.val_data or cfg.data, model_cfg.default_input_size)

    model = build_model(model_cfg)
    if cfg.init and resume_state is None:
        init_report = init_model(model, cfg.init, classes)  # any checkpoint `faseg convert` reads; class head by name
        if info.is_main:
            print(init_report.format(), file=sys.stderr)
            (out / "init_report.json").write_text(json.dumps(init_report.to_dict(), indent=2) + "\n")
    if cfg.freeze_backbone:
        freeze_backbone(model)
    model.to(device)
    model.train()
    model_without_ddp = model
    if info.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        model_without_ddp = model.module
    criterion = build_criterion(cfg, model_cfg).to(device)
    optimizer = build_optimizer(
        model_without_ddp,
        cfg.lr,
        cfg.weight_decay,
        cfg.backbone_multiplier,
        cfg.weight_decay_norm,
        cfg.weight_decay_embed,
    )
    scheduler = build_scheduler(optimizer, cfg.max_iter, cfg.poly_power, cfg.warmup_iters, cfg.warmup_factor)
    amp_dtype = _amp_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    micro, rem = divmod(cfg.batch_size, info.world_size * cfg.accum_steps)
    if rem or micro == 0:
        raise ValueError(
            f"batch size {cfg.batch_size} must be a multiple of processes × accumulation steps "
            f"({info.world_size} × {cfg.accum_steps})"
        )
    start_iter, best_miou, position, wall_before = 0, -1.0, (0, 0), 0.0
    if resume_state is not None:
        model_without_ddp.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        # The schedule follows the *current* config (e.g. a longer --iters); only the position is restored.
        sched_state = {**resume_state["scheduler"], "lr_lambdas": scheduler.state_dict()["lr_lambdas"]}
        scheduler.load_state_dict(sched_state)
        scaler.load_state_dict(resume_state["scaler"])
        start_iter = int(resume_state["iteration"])
        best_miou = float(resume_state.get("best_miou", -1.0))
        wall_before = float(resume_state.get("wall_time_s", 0.0))
        saved = resume_state.get("data_position", {})
        if saved.get("world_size") == info.world_size and saved.get("micro_batch") == micro:
            position = (int(saved["epoch"]), int(saved["consumed"]))
        else:
            position = (int(saved.get("epoch", 0)) + 1, 0)
            if info.is_main:
                print(
                    "note: process count or batch changed since the checkpoint; data restarts at the next epoch",
                    file=sys.stderr,
                )
    loader = InfiniteLoader(
        train_set, micro, info.rank, info.world_size, cfg.seed, cfg.num_workers, _collate_train, position
    )
    batches = iter(loader)
    log = MetricsLog(out, info.is_main)
    if info.is_main:
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    def training_state(iteration: int) -> dict[str, Any]:
        epoch, consumed = loader.position
        return {
            "iteration": iteration,
            "model": model_without_ddp.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "best_miou": best_miou,
            "wall_time_s": wall_before + time.perf_counter() - t_start,  # training time over all segments
            "data_position": {
                "epoch": epoch,
                "consumed": consumed,
                "micro_batch": micro,
                "world_size": info.world_size,
            },
            "model_config": model_cfg.to_dict(),
            "train_config": cfg.to_dict(),
        }

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.max_iter,
        initial=start_iter,
        disable=not (cfg.progress and info.is_main),
        desc="train",
        dynamic_ncols=True,
    )
    t_start = time.perf_counter()
    last_eval: dict[str, Any] | None = None
    stopped = False
    iteration = start_iter
    try:
        for iteration in range(start_iter + 1, cfg.max_iter + 1):
            t0 = time.perf_counter()
            micro_batches = [next(batches) for _ in range(cfg.accum_steps)]
            t_data = time.perf_counter() - t0
            if cfg.freeze_backbone:
                model_without_ddp.backbone.eval()
            metrics = train_one_step(
                model,
                criterion,
                optimizer,
                scheduler,
                scaler,
                micro_batches,
                device=device,
                clip_grad=cfg.clip_grad,
                amp_dtype=amp_dtype,
                generator=generator,
            )
            metrics["data_time"] = t_data
            metrics["time"] = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")
            final = iteration == cfg.max_iter
            if cfg.log_period and (iteration % cfg.log_period == 0 or iteration == start_iter + 1 or final):
                log.write({"type": "train", "iteration": iteration, "epoch": loader.position[0], **metrics})
            if val_set is not None and ((cfg.eval_period and iteration % cfg.eval_period == 0) or final):
                last_eval = evaluate(
                    model_without_ddp,
                    val_set,
                    device,
                    recipe=recipe,
                    batch_size=cfg.eval_batch_size,
                    limit=cfg.eval_limit,
                    amp_dtype=amp_dtype,
                    progress=cfg.progress and info.is_main,
                )
                model.train()
                log.write(
                    {
                        "type": "eval",
                        "iteration": iteration,
                        "miou": last_eval["miou"],
                        "pixel_acc": last_eval["pixel_acc"],
                        "mean_acc": last_eval["mean_acc"],
                        "per_class_iou": last_eval["per_class_iou"],
                    }
                )
                if info.is_main:
                    bar.write(f"iter {iteration}: val mIoU {last_eval['miou']:.4f}")
                if last_eval["miou"] > best_miou:
                    best_miou = last_eval["miou"]
                    if info.is_main:
                        meta = _model_metadata(
                            cfg, iteration, {"val_miou": best_miou, "val_images": last_eval["num_images"]}
                        )
                        save_pretrained(model_without_ddp, out / BEST_DIR, classes, palette, metadata=meta)
                _barrier()
            stop = bool(step_callback(iteration, metrics)) if step_callback is not None else False
            if (cfg.checkpoint_period and iteration % cfg.checkpoint_period == 0) or final or stop:
                save_training_state(out, training_state(iteration), generator, info)
            if stop:
                stopped = True
                break
    finally:
        bar.close()
        log.close()

    wall = wall_before + time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "iteration": iteration,
        "stopped_early": stopped,
        "wall_time_s": wall,
        "best_miou": best_miou if best_miou >= 0 else None,
        "last_eval": last_eval,
        "out": str(out),
        "final_dir": None,
        "best_dir": str(out / BEST_DIR) if best_miou >= 0 else None,
    }
    if not stopped:
        extra = {"train_wall_time_s": wall, "machine": f"{socket.gethostname()} ({os.cpu_count()} CPUs, {device})"}
        if last_eval is not None:
            extra["val_miou"] = last_eval["miou"]
        if info.is_main:
            save_pretrained(
                model_without_ddp, out / FINAL_DIR, classes, palette, metadata=_model_metadata(cfg, iteration, extra)
            )
        summary["final_dir"] = str(out / FINAL_DIR)
    _barrier()
    return summary
