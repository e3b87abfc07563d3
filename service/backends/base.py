"""The one interface every inference backend implements.

Contract (the same as the exported ONNX graph, DESIGN §5): ``infer`` takes a batch of letterboxed RGB
images, uint8 (N, H, W, 3) with (H, W) = ``input_size``, and returns per-pixel labels (N, H, W) uint8
(uint16 past 255 classes) and their confidence (N, H, W) float32. N is at most ``max_batch_size``.
A backend is used from one thread at a time (the batcher's inference thread); it raises
``BackendOutOfMemory`` when the device is out of memory so the batcher can split the batch and retry.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from faseg.export.metadata import (  # the keys the exporter writes (ONNX metadata_props, TensorRT sidecars)
    META_CLASSES,
    META_FLAVOUR,
    META_FORMAT_VERSION,
    META_INPUT_SIZE,
    META_PALETTE,
    META_PRESET,
)

RGB = tuple[int, int, int]

INPUT_NAME = "images"
LABELS_NAME = "labels"
CONFIDENCE_NAME = "confidence"
SIZE_MULTIPLE = 32


class BackendError(RuntimeError):
    """The model cannot be loaded or does not follow the serving contract."""


class BackendOutOfMemory(RuntimeError):
    """The device ran out of memory for this batch; a smaller batch may fit."""


@dataclass(frozen=True)
class BackendOutput:
    labels: np.ndarray  # (N, H, W) uint8 | uint16
    confidence: np.ndarray  # (N, H, W) float32


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a model besides running it."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    input_size: tuple[int, int]  # (H, W), multiples of 32
    preset: str | None = None
    flavour: str | None = None
    format_version: str | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise BackendError(f"model {self.name!r} declares no classes")
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise BackendError(f"model input size {h}x{w} is not a positive multiple of {SIZE_MULTIPLE}")

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if len(self.classes) <= 256 else np.dtype(np.uint16)

    @classmethod
    def from_metadata(cls, name: str, metadata: Mapping[str, str], *, input_size: tuple[int, int] | None = None):
        """Parse the ``faseg.*`` metadata entries; ``input_size`` from the graph wins over the metadata."""
        try:
            classes = tuple(str(c) for c in json.loads(metadata[META_CLASSES]))
        except KeyError:
            raise BackendError(f"model {name!r} has no {META_CLASSES!r} metadata") from None
        except (ValueError, TypeError) as exc:
            raise BackendError(f"model {name!r}: {META_CLASSES!r} is not a JSON list: {exc}") from None
        palette = parse_palette(metadata.get(META_PALETTE), len(classes), name)
        if input_size is None:
            try:
                h, w = json.loads(metadata[META_INPUT_SIZE])
                input_size = (int(h), int(w))
            except KeyError:
                raise BackendError(f"model {name!r}: fixed input size unknown (no {META_INPUT_SIZE!r})") from None
            except (ValueError, TypeError) as exc:
                raise BackendError(f"model {name!r}: bad {META_INPUT_SIZE!r}: {exc}") from None
        return cls(
            name=name,
            classes=classes,
            palette=palette,
            input_size=input_size,
            preset=metadata.get(META_PRESET),
            flavour=metadata.get(META_FLAVOUR),
            format_version=metadata.get(META_FORMAT_VERSION),
        )


def default_palette(num_classes: int) -> tuple[RGB, ...]:
    """Distinct colours for models that ship none: bit-interleaved like the PASCAL VOC palette."""
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def parse_palette(raw: str | Sequence[Sequence[int]] | None, num_classes: int, name: str) -> tuple[RGB, ...]:
    if raw is None:
        return default_palette(num_classes)
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
        palette = tuple((int(r), int(g), int(b)) for r, g, b in entries)
    except (ValueError, TypeError) as exc:
        raise BackendError(f"model {name!r}: palette is not a list of [r, g, b]: {exc}") from None
    if any(not 0 <= v <= 255 for rgb in palette for v in rgb):
        raise BackendError(f"model {name!r}: palette values must lie in 0..255")
    if len(palette) < num_classes:  # a short palette is completed rather than refused
        palette = palette + default_palette(num_classes)[len(palette) :]
    return palette[:num_classes]


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


LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


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
