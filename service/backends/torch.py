"""PyTorch backend: an ``nn.Module`` that maps uint8 NHWC images to (labels, confidence), on CPU or CUDA.

The module is what ``faseg.model.ServingHead`` is: ``forward(images)`` with images (N, H, W, 3) uint8
returning labels (N, H, W) and confidence (N, H, W), possibly followed by extra outputs that are ignored.
A checkpoint directory is turned into a (module, ``ModelInfo``) pair by a loader hook, by default
:func:`faseg.model.load_serving_module` (which returns the module with its ``CheckpointInfo``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faseg.model import load_serving_module
from faseg.model.ops.kernels import KernelsUnavailableError, select_kernels
from torch import nn

from .base import Backend, BackendError, BackendOutOfMemory, BackendOutput, ContractError, ModelInfo

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: checkpoint directory -> (serving module, its ModelInfo); the backend sets the info's name.
ServingLoader = Callable[[Path], tuple[nn.Module, ModelInfo]]


def default_loader(checkpoint_dir: Path) -> tuple[nn.Module, ModelInfo]:
    loaded = load_serving_module(checkpoint_dir)
    info = loaded.info
    model_info = ModelInfo(
        name=checkpoint_dir.name,
        classes=tuple(str(c) for c in info.classes),
        palette=tuple((int(r), int(g), int(b)) for r, g, b in info.palette),
        input_size=(int(info.input_size[0]), int(info.input_size[1])),
    )
    return loaded.module, model_info


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        info: ModelInfo,
        *,
        device: str = "cpu",
        max_batch_size: int = 8,
        precision: str = "fp32",
        intra_op_threads: int = 0,
        kernels: str = "auto",
    ):
        super().__init__(info, device=device, max_batch_size=max_batch_size, precision=precision)
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("device cuda requested but torch sees no CUDA device")
        if precision == "fp16" and device != "cuda":
            raise BackendError("precision fp16 needs device cuda")
        if intra_op_threads > 0:
            torch.set_num_threads(intra_op_threads)
        try:  # the attention ops' path (fused CUDA kernels or references), reported by details()
            self.kernels = select_kernels(kernels, device)
        except KernelsUnavailableError as exc:
            raise BackendError(str(exc)) from exc
        self._device = torch.device(device)
        self._module = module.eval().to(self._device)

    @classmethod
    def load(
        cls, checkpoint_dir: Path, *, model_name: str, loader: ServingLoader | None = None, **kwargs: Any
    ) -> TorchBackend:
        if not checkpoint_dir.is_dir():
            raise BackendError(f"torch checkpoint directory {str(checkpoint_dir)!r} does not exist")
        try:
            module, info = (loader or default_loader)(checkpoint_dir)
        except (ContractError, ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
            raise BackendError(f"cannot load torch checkpoint {str(checkpoint_dir)!r}: {exc}") from exc
        info = dataclasses.replace(info, name=model_name)
        return cls(module, info, **kwargs)

    def details(self) -> dict[str, Any]:
        return {"torch": torch.__version__, "kernels": self.kernels.path}

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        dtype = AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self._device.type, dtype=dtype):
            yield

    def infer(self, images: np.ndarray) -> BackendOutput:
        try:
            with torch.inference_mode(), self._autocast():
                batch = torch.from_numpy(images).to(self._device, non_blocking=True)
                outputs = self._module(batch)
                labels, confidence = outputs[0], outputs[1]
                labels = labels.to(torch.uint8 if len(self.classes) <= 256 else torch.uint16)
                confidence = confidence.float()
                return BackendOutput(labels=labels.cpu().numpy(), confidence=confidence.cpu().numpy())
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise BackendOutOfMemory(str(exc)) from exc

    def close(self) -> None:
        del self._module
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
