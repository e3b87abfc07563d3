"""Processes and devices of a training run: torchrun's process group, the device of each process, AMP.

One process, or one per device under ``torchrun`` (found from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, as in
torchvision's ``references/segmentation/utils.py``); nccl on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "amp_dtype", "barrier", "resolve_device", "setup_distributed"]


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


def resolve_device(name: str, local_rank: int) -> torch.device:
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
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if rank is None or world_size is None:
        return DistInfo(0, 1, 0, dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp mode`` on ``device`` (None: no autocast); refuses what the device lacks."""
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


def barrier() -> None:
    """Wait for every process of an initialised group (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
