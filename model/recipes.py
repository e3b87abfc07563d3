"""Training recipes: the settings of a run (:class:`TrainConfig`) and the per-dataset defaults (:func:`data_recipe`).

The model presets (:mod:`faseg.model.presets`) say *what* is trained; a recipe says *how*: optimiser, schedule,
losses, augmentation and evaluation sizes. :class:`TrainConfig`'s defaults are the official ADE20K recipe
(spec §3.4–3.5); the data fields left at ``None`` take the defaults of the dataset kind (:class:`DataRecipe`:
ADE20K and Cityscapes as in the official configs, and the ADE20K recipe scaled to the model's input size for
the folder and synthetic datasets). The bundled demo model's recipe is :data:`faseg.model.demo.DEMO_RECIPE`.

This module imports nothing heavier than the standard library, so a recipe can be built without the
training stack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["AmpMode", "DataRecipe", "TrainConfig", "data_recipe"]

AmpMode = Literal["auto", "off", "fp16", "bf16"]


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
