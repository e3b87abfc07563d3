"""Which implementation the model's attention ops run: ``--kernels auto|on|off``.

:func:`select_kernels` is the one place that decides. It registers FASeg's fused CUDA kernels
(:mod:`faseg.model.ops.cuda_ops`) at the model's dispatch point or restores the PyTorch references, logs the
path that will run, and returns it as a :class:`KernelChoice`. The commands that run a model on a device
(``faseg serve --backend torch``, ``faseg train``, ``faseg eval``) call it once before the first forward.

- ``auto`` (default): the fused kernels when the device is CUDA and the kernel library (or the PyTorch
  extension) is built; the references otherwise, with the reason.
- ``on``: the fused kernels, or :class:`KernelsUnavailableError` naming why they cannot run (on a CPU device:
  "no CUDA device ...").
- ``off``: the references.

The dispatch point is process-wide: the choice holds for every model of the process on that device type.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from . import cuda_library, cuda_ops
from .cuda_library import KernelsUnavailableError

KernelMode = Literal["auto", "on", "off"]
KernelPath = Literal["fused", "reference"]
KERNEL_MODES: tuple[KernelMode, ...] = ("auto", "on", "off")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelChoice:
    """The path the ops take after :func:`select_kernels`."""

    mode: str  # what was asked: auto | on | off
    path: KernelPath  # "fused": FASeg's CUDA kernels; "reference": the PyTorch references
    reason: str  # why this path (the kernel origin when fused)

    def summary(self) -> str:
        return f"kernels: {self.path} (--kernels {self.mode}: {self.reason})"


def _device_type(device: str | torch.device) -> str:
    """The device type ("cuda", "cpu", ...) of a device spec; "auto" means CUDA when torch sees a device."""
    if isinstance(device, str) and device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _unavailable(device_type: str) -> str:
    """Why the fused kernels cannot run on ``device_type`` ("" when they can)."""
    if device_type != "cuda":
        return f"no CUDA device: the model runs on {device_type} and the fused kernels are CUDA-only"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__} sees none)"
    if cuda_library.kernel_backend() is None:
        return f"kernel library not available: {cuda_library.unavailable_reason()}"
    return ""


def select_kernels(mode: str, device: str | torch.device) -> KernelChoice:
    """Apply ``--kernels mode`` for a model on ``device`` ("cpu", "cuda", "cuda:1", "auto", a torch.device).

    ``fused``: registers the kernels for CUDA tensors. ``off`` restores the references; ``auto`` without
    usable kernels leaves the registration alone (nothing fused can be registered then). Logs the choice at
    INFO and returns it. Raises ``ValueError`` for an unknown mode and
    :class:`KernelsUnavailableError` (with the reason) for ``on`` when the kernels cannot run.
    """
    if mode not in KERNEL_MODES:
        raise ValueError(f"unknown kernels mode {mode!r}; expected one of {', '.join(KERNEL_MODES)}")
    if mode == "off":
        cuda_ops.disable_kernels()
        choice = KernelChoice(mode, "reference", "fused kernels switched off")
    else:
        reason = _unavailable(_device_type(device))
        if reason and mode == "on":
            raise KernelsUnavailableError(f"--kernels on: the fused CUDA kernels cannot run: {reason}")
        if reason:  # nothing is registered: the CUDA registration does not concern this device
            choice = KernelChoice(mode, "reference", reason)
        else:
            if not cuda_ops.enable_kernels():  # the backend was found above; this only registers
                raise KernelsUnavailableError(f"enabling the CUDA kernels failed: {cuda_ops.unavailable_reason()}")
            backend = cuda_library.kernel_backend()
            origin = f"{backend.name}: {backend.origin}" if backend is not None else "?"
            choice = KernelChoice(mode, "fused", origin)
    log.info("%s", choice.summary())
    return choice


__all__ = ["KERNEL_MODES", "KernelChoice", "KernelMode", "KernelPath", "KernelsUnavailableError", "select_kernels"]
