"""Training: the official recipe (spec §3) in one iteration-based loop, resumable and torchrun-ready.

Shaped like torchvision's ``references/segmentation/train.py`` (``train_one_epoch`` / ``evaluate`` / ``main``,
``model_without_ddp``, ``sampler.set_epoch``) but counted in iterations like detectron2: :func:`train_loop`
runs the optimiser steps (:func:`train_one_step`) and hands each step's metrics to an ``after_step`` hook;
:func:`main` wires the parts together and is that hook's owner. Launch::

    faseg train --preset faseg_tiny --data synthetic:train --val-data synthetic:val --out runs/tiny
    torchrun --nproc_per_node 2 -m faseg train ...        # DDP: gloo on CPU, nccl on GPU (found from RANK)

The parts: the recipe (:mod:`.recipes`), processes and devices (:mod:`.distributed`), the loader
(:mod:`.data.loader`), what the loop drives (:mod:`.trainer`), checkpoints and RNG (:mod:`.train_state`), the
metrics log (:mod:`.metrics_log`).

Call order of :func:`main` (what happens when, as in detectron2's ``HookBase`` docstring)::

    setup_distributed()                      # torchrun env (RANK, WORLD_SIZE, LOCAL_RANK) or one process
    seed_everything(seed + rank)             # python, numpy, torch; deterministic mode when asked
    if --resume and OUT/last exists: load_training_state()   # RNG + criterion generator restored here
    build datasets → model (--init weights) → build_trainer(): DDP wrap, criterion, optimizer, scheduler, scaler
    if resuming: restore_training_state()    # model, optimiser, scheduler, scaler, iteration, data position
    train_loop(after_step=_Run.after_step):
        for iteration in [start, max_iter):
            micro_batches = next(loader) × accum_steps         # InfiniteLoader: set_epoch() at each epoch
            train_one_step(...)                                 # forward → loss → backward (grads all-reduced
                                                                # on the last micro-batch only) → unscale →
                                                                # clip → optimizer.step → scheduler.step
            after_step(iteration, metrics):
                every log_period:     metrics.jsonl (+ TensorBoard), progress bar
                every eval_period:    evaluate() on the val set → metrics.jsonl → OUT/best/ when mIoU improves
                step_callback(iteration, metrics)               # tests: raise = crash, True = stop
                every checkpoint_period (or stop): save_training_state(OUT/last/)   # after eval: knows the best
    save_pretrained(OUT/final/)

Output directory::

    OUT/last/                  the training state (:mod:`.train_state`), written atomically
    OUT/best/                  our model format (save_pretrained) at the best val mIoU
    OUT/final/                 our model format at the end of training
    OUT/metrics.jsonl          one JSON object per logged iteration and per evaluation (:mod:`.metrics_log`)
    OUT/train_config.json      the TrainConfig of the run

In deterministic mode on the CPU a resumed run is bit-identical to an uninterrupted one (test:
``tests/model/test_train.py``).

Batch size is the *total* per optimiser step (detectron2 ``IMS_PER_BATCH``, 16 in the official configs):
each process loads ``batch_size / (world_size · accum_steps)`` images per micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from .checkpoint import save_pretrained
from .convert.init_weights import init_model
from .criterion import SetCriterion
from .data.batch import Batch, collate
from .data.loader import InfiniteLoader
from .data.transforms import build_test_transform
from .distributed import DistInfo, barrier, setup_distributed
from .evaluation import SemSegEvaluator, multiscale_flip_probs, predict_scores
from .faseg import FASeg, build_model
from .focus import focus_loss
from .metrics_log import METRICS_NAME, MetricsLog
from .optim import clip_grad_norm_full_model
from .recipes import DataRecipe, TrainConfig, data_recipe
from .train_state import (
    LAST_DIR,
    Progress,
    open_run_directory,
    restore_training_state,
    save_training_state,
    seed_everything,
    training_state,
)
from .trainer import (
    TrainData,
    Trainer,
    build_criterion,
    build_trainer,
    load_train_data,
    micro_batch_size,
)

INIT_REPORT_NAME = "init_report.json"  # OUT/init_report.json: what --init carried over

__all__ = [
    "LAST_DIR",
    "METRICS_NAME",
    "DataRecipe",
    "DistInfo",
    "TrainConfig",
    "build_criterion",
    "data_recipe",
    "evaluate",
    "main",
    "setup_distributed",
    "train_loop",
    "train_one_step",
]

BEST_DIR = "best"
FINAL_DIR = "final"


# ---------------------------------------------------------------------------------------------------------
# One optimisation step, and the loop


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



def train_loop(
    trainer: Trainer,
    batches: Iterator[Batch],
    *,
    start_iter: int,
    max_iter: int,
    accum_steps: int = 1,
    after_step: Callable[[int, dict[str, float]], bool] | None = None,
) -> tuple[int, bool]:
    """Optimiser steps ``start_iter + 1 .. max_iter``; returns (last iteration, stopped early).

    Call order per iteration::

        micro_batches = next(batches) × accum_steps      # "data_time"
        backbone.eval()                                   # only with freeze_backbone (frozen statistics)
        metrics = train_one_step(...)                     # loss, loss_ce / _mask / _dice, grad_norm, lr
        stop = after_step(iteration, metrics)             # + "data_time", "time"; True ends the loop

    ``after_step`` is where logging, evaluation and checkpoints happen (:func:`main`); a benchmark that
    only records the losses passes its own.
    """
    iteration = start_iter
    for iteration in range(start_iter + 1, max_iter + 1):
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(accum_steps)]
        t_data = time.perf_counter() - t0
        if trainer.freeze_backbone:
            trainer.model_without_ddp.backbone.eval()
        metrics = train_one_step(
            trainer.model,
            trainer.criterion,
            trainer.optimizer,
            trainer.scheduler,
            trainer.scaler,
            micro_batches,
            device=trainer.device,
            clip_grad=trainer.clip_grad,
            amp_dtype=trainer.amp_dtype,
            generator=trainer.generator,
        )
        metrics["data_time"] = t_data
        metrics["time"] = time.perf_counter() - t0
        if after_step is not None and after_step(iteration, metrics):
            return iteration, True
    return iteration, False


# ---------------------------------------------------------------------------------------------------------
# Evaluation


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
# main


def _model_metadata(cfg: TrainConfig, iteration: int, extra: dict[str, Any]) -> dict[str, Any]:
    init_report = Path(cfg.out) / INIT_REPORT_NAME  # what --init carried over (written at the run's start)
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


class _Run:
    """:func:`main`'s side of the loop: progress bar, metrics log, periodic evaluation and checkpoints."""

    def __init__(
        self,
        cfg: TrainConfig,
        info: DistInfo,
        trainer: Trainer,
        loader: InfiniteLoader,
        data: TrainData,
        progress: Progress,
        micro_batch: int,
        step_callback: Callable[[int, dict[str, float]], bool | None] | None,
    ) -> None:
        self.cfg, self.info, self.trainer, self.loader, self.data = cfg, info, trainer, loader, data
        self.out = Path(cfg.out)
        self.start_iter = progress.iteration
        self.best_miou = progress.best_miou
        self.wall_before = progress.wall_time_s
        self.micro_batch = micro_batch
        self.step_callback = step_callback
        self.last_eval: dict[str, Any] | None = None
        self.log = MetricsLog(self.out, info.is_main)
        if info.is_main:
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        self.bar = tqdm(
            total=cfg.max_iter,
            initial=self.start_iter,
            disable=not (cfg.progress and info.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        self.t_start = time.perf_counter()

    def wall_time(self) -> float:
        """Training time over all segments of the run."""
        return self.wall_before + time.perf_counter() - self.t_start

    def after_step(self, iteration: int, metrics: dict[str, float]) -> bool:
        cfg = self.cfg
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")
        final = iteration == cfg.max_iter
        if cfg.log_period and (iteration % cfg.log_period == 0 or iteration == self.start_iter + 1 or final):
            self.log.write({"type": "train", "iteration": iteration, "epoch": self.loader.position[0], **metrics})
        if self.data.val_set is not None and ((cfg.eval_period and iteration % cfg.eval_period == 0) or final):
            self.evaluate(iteration)
        stop = bool(self.step_callback(iteration, metrics)) if self.step_callback is not None else False
        if (cfg.checkpoint_period and iteration % cfg.checkpoint_period == 0) or final or stop:
            self.save_state(iteration)
        return stop

    def evaluate(self, iteration: int) -> None:
        """Val mIoU → metrics log; ``OUT/best/`` when it improves."""
        cfg, model = self.cfg, self.trainer.model_without_ddp
        result = self.last_eval = evaluate(
            model,
            self.data.val_set,
            self.trainer.device,
            recipe=self.data.recipe,
            batch_size=cfg.eval_batch_size,
            limit=cfg.eval_limit,
            amp_dtype=self.trainer.amp_dtype,
            progress=cfg.progress and self.info.is_main,
        )
        self.trainer.model.train()
        scores = {k: result[k] for k in ("miou", "pixel_acc", "mean_acc", "per_class_iou")}
        self.log.write({"type": "eval", "iteration": iteration, **scores})
        if self.info.is_main:
            self.bar.write(f"iter {iteration}: val mIoU {result['miou']:.4f}")
        if result["miou"] > self.best_miou:
            self.best_miou = result["miou"]
            if self.info.is_main:
                meta = _model_metadata(cfg, iteration, {"val_miou": self.best_miou, "val_images": result["num_images"]})
                save_pretrained(model, self.out / BEST_DIR, self.data.classes, self.data.palette, metadata=meta)
        barrier()

    def save_state(self, iteration: int) -> None:
        progress = Progress(iteration, self.best_miou, self.wall_time(), self.loader.position)
        state = training_state(
            self.trainer,
            progress,
            micro_batch=self.micro_batch,
            world_size=self.info.world_size,
            model_config=self.data.model_cfg,
            train_config=self.cfg,
        )
        save_training_state(self.out, state, self.trainer.generator, self.info)

    def close(self) -> None:
        self.bar.close()
        self.log.close()

    def finish(self, iteration: int, stopped: bool) -> dict[str, Any]:
        """The summary :func:`main` returns; ``OUT/final/`` unless the run stopped early."""
        out, wall, best = self.out, self.wall_time(), self.best_miou
        summary: dict[str, Any] = {
            "iteration": iteration,
            "stopped_early": stopped,
            "wall_time_s": wall,
            "best_miou": best if best >= 0 else None,
            "last_eval": self.last_eval,
            "out": str(out),
            "final_dir": None,
            "best_dir": str(out / BEST_DIR) if best >= 0 else None,
        }
        if not stopped:
            machine = f"{socket.gethostname()} ({os.cpu_count()} CPUs, {self.trainer.device})"
            extra: dict[str, Any] = {"train_wall_time_s": wall, "machine": machine}
            if self.last_eval is not None:
                extra["val_miou"] = self.last_eval["miou"]
            if self.info.is_main:
                meta = _model_metadata(self.cfg, iteration, extra)
                model = self.trainer.model_without_ddp
                save_pretrained(model, out / FINAL_DIR, self.data.classes, self.data.palette, metadata=meta)
            summary["final_dir"] = str(out / FINAL_DIR)
        barrier()
        return summary


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
    seed_everything(cfg.seed + info.rank, cfg.deterministic)
    generator = torch.Generator(device=info.device)
    generator.manual_seed(cfg.seed + info.rank)
    resume_state = open_run_directory(Path(cfg.out), cfg.resume, generator, info)
    data = load_train_data(cfg, resume_state)

    model = build_model(data.model_cfg)
    if cfg.init and resume_state is None:
        init_report = init_model(model, cfg.init, data.classes)  # any checkpoint `faseg convert` reads
        if info.is_main:
            print(init_report.format(), file=sys.stderr)
            out_dir = Path(cfg.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / INIT_REPORT_NAME).write_text(json.dumps(init_report.to_dict(), indent=2) + "\n")
    trainer = build_trainer(cfg, model, info, generator)
    micro = micro_batch_size(cfg, info)
    progress = Progress()
    if resume_state is not None:
        progress = restore_training_state(trainer, resume_state, micro_batch=micro, info=info)
    loader = InfiniteLoader(
        data.train_set, micro, info.rank, info.world_size, cfg.seed, cfg.num_workers, collate, progress.data_position
    )
    run = _Run(cfg, info, trainer, loader, data, progress, micro, step_callback)
    try:
        iteration, stopped = train_loop(
            trainer,
            iter(loader),
            start_iter=progress.iteration,
            max_iter=cfg.max_iter,
            accum_steps=cfg.accum_steps,
            after_step=run.after_step,
        )
    finally:
        run.close()
    return run.finish(iteration, stopped)
