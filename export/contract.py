"""The serving contract of an exported FASeg file, in one place: what the exporter writes and every runtime
(ONNX Runtime session, TensorRT engine, the service's backends) reads.

- I/O: input ``images`` uint8 (N, H, W, 3) RGB 0–255, H and W fixed per file and multiples of
  :data:`SIZE_MULTIPLE`; outputs ``labels`` (N, H, W) uint8 (uint16 past 256 classes) and ``confidence``
  (N, H, W) float32, optionally ``pred_logits`` / ``pred_masks``.
- Flavours and precisions by name (:data:`FLAVOURS`, :data:`PRECISIONS`; tuples that grow with the exporter).
- Metadata: the ``faseg.*`` keys of :mod:`faseg.export.metadata`, parsed into a :class:`ModelInfo`.
- :class:`OutOfDeviceMemory`, raised by every runtime when a batch does not fit, so that callers can retry
  with a smaller one.

No torch, no onnx: the service's runtime image imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .metadata import META_CLASSES, META_FLAVOUR, META_FORMAT_VERSION, META_INPUT_SIZE, META_PALETTE, META_PRESET

INPUT_NAME = "images"
LABELS_NAME = "labels"
CONFIDENCE_NAME = "confidence"
PRED_LOGITS = "pred_logits"
PRED_MASKS = "pred_masks"
#: The outputs every runtime of the service needs, in graph order.
SERVING_OUTPUTS = (LABELS_NAME, CONFIDENCE_NAME)
BATCH_DIM = "N"
SIZE_MULTIPLE = 32
INPUT_LAYOUT = "NHWC uint8 RGB 0-255"
LABEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

PORTABLE_FLAVOUR = "portable"
PLUGIN_FLAVOUR = "plugin"
FLAVOURS = (PORTABLE_FLAVOUR, PLUGIN_FLAVOUR)
#: Precision names of exported files and engines, in the order the CLI lists them.
PRECISIONS = ("fp32", "fp16", "int8")

RGB = tuple[int, int, int]


class ContractError(ValueError):
    """A file, size or metadata entry does not follow the serving contract."""


class OutOfDeviceMemory(RuntimeError):
    """The device ran out of memory for this batch; a smaller batch may fit."""


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) as ints, refusing sizes that are not positive multiples of :data:`SIZE_MULTIPLE`."""
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        suggestion = "x".join(str(max(SIZE_MULTIPLE, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE)) for v in (h, w))
        raise ContractError(
            f"input size {h}x{w} is not a multiple of {SIZE_MULTIPLE}; export one file per bucket with H and W "
            f"multiples of {SIZE_MULTIPLE} (e.g. {suggestion}) and letterbox images into it"
        )
    return h, w


def default_palette(num_classes: int) -> tuple[RGB, ...]:
    """Distinct colours for files that ship none: bit-interleaved like the PASCAL VOC palette."""
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
    """A palette from metadata JSON or a list of [r, g, b]; a short one is completed, a missing one made."""
    if raw is None:
        return default_palette(num_classes)
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
        palette = tuple((int(r), int(g), int(b)) for r, g, b in entries)
    except (ValueError, TypeError) as exc:
        raise ContractError(f"model {name!r}: palette is not a list of [r, g, b]: {exc}") from None
    if any(not 0 <= v <= 255 for rgb in palette for v in rgb):
        raise ContractError(f"model {name!r}: palette values must lie in 0..255")
    if len(palette) < num_classes:  # a short palette is completed rather than refused
        palette = palette + default_palette(num_classes)[len(palette) :]
    return palette[:num_classes]


@dataclass(frozen=True)
class ModelInfo:
    """What a runtime's user needs to know about a model besides running it."""

    name: str
    classes: tuple[str, ...]
    palette: tuple[RGB, ...]
    input_size: tuple[int, int]  # (H, W), multiples of SIZE_MULTIPLE
    preset: str | None = None
    flavour: str | None = None
    format_version: str | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise ContractError(f"model {self.name!r} declares no classes")
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ContractError(f"model input size {h}x{w} is not a positive multiple of {SIZE_MULTIPLE}")

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if len(self.classes) <= 256 else np.dtype(np.uint16)

    @classmethod
    def from_metadata(
        cls, name: str, metadata: Mapping[str, str], *, input_size: tuple[int, int] | None = None
    ) -> ModelInfo:
        """Parse the ``faseg.*`` metadata entries; ``input_size`` from the graph wins over the metadata."""
        try:
            classes = tuple(str(c) for c in json.loads(metadata[META_CLASSES]))
        except KeyError:
            raise ContractError(f"model {name!r} has no {META_CLASSES!r} metadata") from None
        except (ValueError, TypeError) as exc:
            raise ContractError(f"model {name!r}: {META_CLASSES!r} is not a JSON list: {exc}") from None
        palette = parse_palette(metadata.get(META_PALETTE), len(classes), name)
        if input_size is None:
            input_size = metadata_input_size(metadata, name)
            if input_size is None:
                raise ContractError(f"model {name!r}: fixed input size unknown (no {META_INPUT_SIZE!r})")
        return cls(
            name=name,
            classes=classes,
            palette=palette,
            input_size=input_size,
            preset=metadata.get(META_PRESET),
            flavour=metadata.get(META_FLAVOUR),
            format_version=metadata.get(META_FORMAT_VERSION),
        )


def metadata_input_size(metadata: Mapping[str, str], name: str = "model") -> tuple[int, int] | None:
    """(H, W) from ``faseg.input_size``, None when the entry is absent."""
    raw = metadata.get(META_INPUT_SIZE)
    if raw is None:
        return None
    try:
        h, w = json.loads(raw)
        return int(h), int(w)
    except (ValueError, TypeError) as exc:
        raise ContractError(f"model {name!r}: bad {META_INPUT_SIZE!r}: {exc}") from None


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as a runtime reports it: numpy dtype name and shape (None: dynamic dim)."""

    dtype: str
    shape: tuple[int | None, ...]


def check_serving_io(inputs: Mapping[str, TensorInfo], outputs: Mapping[str, TensorInfo]) -> tuple[int, int] | None:
    """Check a graph's I/O against the serving contract; return its fixed (H, W) when the graph states it."""
    if INPUT_NAME not in inputs or inputs[INPUT_NAME].dtype != "uint8":
        found = {name: i.dtype for name, i in inputs.items()}
        raise ContractError(f"expected input {INPUT_NAME!r} uint8, found {found}")
    missing = set(SERVING_OUTPUTS) - outputs.keys()
    if missing:
        raise ContractError(f"missing outputs {sorted(missing)}; has {sorted(outputs)}")
    if np.dtype(outputs[LABELS_NAME].dtype) not in LABEL_DTYPES:
        raise ContractError(f"labels must be uint8 or uint16, not {outputs[LABELS_NAME].dtype}")
    shape = inputs[INPUT_NAME].shape
    if len(shape) != 4 or shape[3] != 3:
        raise ContractError(f"input must be (N, H, W, 3), graph says {list(shape)}")
    h, w = shape[1], shape[2]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> (H, W, 3): scaled to fit with its aspect ratio, top-left on black (as the service)."""
    in_h, in_w = size
    h, w = image.shape[:2]
    scale = min(in_w / w, in_h / h)
    cw, ch = min(in_w, max(1, round(w * scale))), min(in_h, max(1, round(h * scale)))
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    if pil.size != (cw, ch):
        pil = pil.resize((cw, ch), Image.Resampling.BILINEAR)
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    canvas[:ch, :cw] = np.asarray(pil)
    return canvas


__all__ = [
    "BATCH_DIM",
    "CONFIDENCE_NAME",
    "FLAVOURS",
    "INPUT_LAYOUT",
    "INPUT_NAME",
    "LABELS_NAME",
    "LABEL_DTYPES",
    "PLUGIN_FLAVOUR",
    "PORTABLE_FLAVOUR",
    "PRECISIONS",
    "PRED_LOGITS",
    "PRED_MASKS",
    "SERVING_OUTPUTS",
    "SIZE_MULTIPLE",
    "ContractError",
    "ModelInfo",
    "OutOfDeviceMemory",
    "TensorInfo",
    "check_serving_io",
    "check_size",
    "default_palette",
    "letterbox",
    "metadata_input_size",
    "parse_palette",
]
