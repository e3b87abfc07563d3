"""Training state: seeds, RNG, and the resumable checkpoint ``OUT/last/`` (written atomically).

What a checkpoint holds (nanoGPT's and torchvision's ``train.py`` keep the same, plus the configs)::

    OUT/last/state.pt          model, optimizer, scheduler, scaler, iteration, best mIoU, training time,
                               data position (epoch, micro-batches consumed), model and train configs
    OUT/last/rng-rank{r}.pt    python / numpy / torch (/ cuda) RNG and the criterion's generator, per rank

:func:`save_training_state` writes into a temporary directory and renames it into place, so a crash while
writing leaves the previous ``last/`` intact; :func:`find_last_state` also finds the copy moved aside when a
crash hit between the two renames. :func:`training_state` / :func:`restore_training_state` turn a
:class:`~faseg.model.trainer.Trainer` and its :class:`Progress` into that dict and back.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError
from .config import ModelConfig
from .distributed import DistInfo, barrier
from .recipes import TrainConfig
from .trainer import Trainer

__all__ = [
    "LAST_DIR",
    "STATE_NAME",
    "Progress",
    "find_last_state",
    "load_training_state",
    "open_run_directory",
    "restore_training_state",
    "save_training_state",
    "seed_everything",
    "training_state",
]

STATE_NAME = "state.pt"
LAST_DIR = "last"


@dataclass
class Progress:
    """Where a run stands, besides the state of its objects: what a checkpoint adds to them."""

    iteration: int = 0
    best_miou: float = -1.0  # -1: no evaluation yet
    wall_time_s: float = 0.0  # training time of all segments so far (restored: of the earlier ones)
    data_position: tuple[int, int] = (0, 0)  # the loader's (epoch, micro-batches consumed in it)


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


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "criterion" in state:
        generator.set_state(state["criterion"])


def save_training_state(out: Path, state: dict[str, Any], generator: torch.Generator | None, info: DistInfo) -> Path:
    """Write ``OUT/last/`` atomically: into ``OUT/.last.tmp-<iteration>/``, then renamed over ``last/``.

    Rank 0 writes ``state.pt``; every rank writes its own ``rng-rank{r}.pt``. Collective: every rank calls it.
    """
    final = out / LAST_DIR
    tmp = out / f".{LAST_DIR}.tmp-{state['iteration']}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng_state(generator), tmp / f"rng-rank{info.rank}.pt")
    if info.is_main:
        torch.save(state, tmp / STATE_NAME)
    barrier()
    if info.is_main:
        old = out / f".{LAST_DIR}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)  # a directory cannot be renamed onto a non-empty one: move it aside first
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
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
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True), generator)
    else:
        print(f"note: {rng_file} missing (more processes than the saved run); RNG seeded afresh", file=sys.stderr)
    return state


def training_state(
    trainer: Trainer,
    progress: Progress,
    *,
    micro_batch: int,
    world_size: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """The ``state.pt`` dict of ``trainer`` at ``progress`` (``wall_time_s``: all segments so far)."""
    epoch, consumed = progress.data_position
    return {
        "iteration": progress.iteration,
        "model": trainer.model_without_ddp.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "best_miou": progress.best_miou,
        "wall_time_s": progress.wall_time_s,
        "data_position": {"epoch": epoch, "consumed": consumed, "micro_batch": micro_batch, "world_size": world_size},
        "model_config": model_config.to_dict(),
        "train_config": train_config.to_dict(),
    }


def restore_training_state(
    trainer: Trainer, state: dict[str, Any], *, micro_batch: int, info: DistInfo
) -> Progress:
    """Load ``state`` (from :func:`load_training_state`) into ``trainer``; return where the run stood.

    The schedule follows the *current* config (e.g. a longer ``--iters``); only its position is restored.
    The data position is kept when the process count and micro-batch are unchanged, else the data restarts
    at the next epoch.
    """
    trainer.model_without_ddp.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    sched_state = {**state["scheduler"], "lr_lambdas": trainer.scheduler.state_dict()["lr_lambdas"]}
    trainer.scheduler.load_state_dict(sched_state)
    trainer.scaler.load_state_dict(state["scaler"])
    saved = state.get("data_position", {})
    if saved.get("world_size") == info.world_size and saved.get("micro_batch") == micro_batch:
        position = (int(saved["epoch"]), int(saved["consumed"]))
    else:
        position = (int(saved.get("epoch", 0)) + 1, 0)
        if info.is_main:
            print(
                "note: process count or batch changed since the checkpoint; data restarts at the next epoch",
                file=sys.stderr,
            )
    return Progress(
        iteration=int(state["iteration"]),
        best_miou=float(state.get("best_miou", -1.0)),
        wall_time_s=float(state.get("wall_time_s", 0.0)),
        data_position=position,
    )


def open_run_directory(out: Path, resume: bool, generator: torch.Generator, info: DistInfo) -> dict[str, Any] | None:
    """Refuse to overwrite a run unless resuming; read its last state (restoring this rank's RNG) if so."""
    last = find_last_state(out)
    if last is not None and not resume:
        raise ValueError(
            f"{out} already holds a training run ({last}); pass --resume to continue it or pick another --out"
        )
    state = load_training_state(last, generator, info) if resume and last is not None else None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    return state
