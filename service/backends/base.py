"""The one interface every inference backend implements; the backends are thin adapters over the runtimes of
``faseg.export`` (ONNX Runtime session, TensorRT engine) or a torch module.

Contract (the same as the exported ONNX graph, :mod:`faseg.export.contract`): ``infer`` takes a batch of
letterboxed RGB images, uint8 (N, H, W, 3) with (H, W) = ``input_size``, and returns per-pixel labels
(N, H, W) uint8 (uint16 past 255 classes) and their confidence (N, H, W) float32. N is at most
``max_batch_size``. It raises ``BackendOutOfMemory`` when the device is out of memory so the batcher can split
the batch and retry.

Threads: the batcher calls ``infer`` from its inference pool, ``instances`` threads. With ``instances`` > 1
(``--instances``), ``infer`` is called concurrently on the same backend object, so a backend must either be
safe for concurrent ``infer`` calls (onnxruntime: ``InferenceSession.run`` is; torch: modules in eval mode
under ``inference_mode`` are) or refuse ``instances`` > 1 (tensorrt: one execution context and one set of
I/O buffers, which ``Settings`` refuses). ``warmup`` and ``close`` run on an inference thread while no batch
is in flight.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from faseg.export.contract import LABEL_DTYPES, RGB, ContractError, ModelInfo
from faseg.export.contract import OutOfDeviceMemory as BackendOutOfMemory  # one class for every runtime

__all__ = [
    "Backend",
    "BackendError",
    "BackendOutOfMemory",
    "BackendOutput",
    "ContractError",
    "ModelInfo",
    "check_output",
]


class BackendError(RuntimeError):
    """The model cannot be loaded or does not follow the serving contract."""


@dataclass(frozen=True)
class BackendOutput:
    labels: np.ndarray  # (N, H, W) uint8 | uint16
    confidence: np.ndarray  # (N, H, W) float32


class Backend(abc.ABC):
    """One loaded model on one device."""

    name: ClassVar[str]

    def __init__(self, info: ModelInfo, *, device: str, max_batch_size: int, precision: str = "fp32"):
        self.info = info
        self.device = device
        self.max_batch_size = max_batch_size
        self.precision = precision

    @property
    def model_name(self) -> str:
        return self.info.name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def palette(self) -> tuple[RGB, ...]:
        return self.info.palette

    def buckets(self) -> list[tuple[int, int]]:
        """The input shapes (H, W) that requests are mapped to; one per exported engine."""
        return [self.input_size]

    def details(self) -> dict[str, Any]:
        """Backend-specific facts for ``GET /v1/models`` (providers, engine profile, ...)."""
        return {}

    @abc.abstractmethod
    def infer(self, images: np.ndarray) -> BackendOutput:
        """images (N, H, W, 3) uint8 → labels and confidence (N, H, W)."""

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Run every bucket × batch size once, checking that the outputs follow the contract."""
        for h, w in self.buckets():
            for n in batch_sizes:
                images = np.zeros((n, h, w, 3), dtype=np.uint8)
                check_output(self.infer(images), images, self.info)

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free memory on garbage collection
        """Release device memory and sessions."""


def check_output(output: BackendOutput, images: np.ndarray, info: ModelInfo) -> None:
    """Raise ``BackendError`` unless ``output`` matches the contract for ``images``."""
    expected = images.shape[:3]
    if output.labels.shape != expected or output.confidence.shape != expected:
        raise BackendError(
            f"backend returned labels {output.labels.shape} / confidence {output.confidence.shape}, expected {expected}"
        )
    if output.labels.dtype not in LABEL_DTYPES:
        raise BackendError(f"labels must be uint8 or uint16, got {output.labels.dtype}")
    if output.confidence.dtype != np.float32:
        raise BackendError(f"confidence must be float32, got {output.confidence.dtype}")
    if len(info.classes) > 256 and output.labels.dtype != np.uint16:
        raise BackendError(f"{len(info.classes)} classes need uint16 labels")
