"""What an ONNX export is asked to do and what it returns: options, the state the steps share, step and run
results, and the :class:`ExportStep` interface (``faseg export onnx``, :mod:`faseg.export.onnx_export`)."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from faseg.export import contract
from faseg.export.contract import CONFIDENCE_NAME as CONFIDENCE
from faseg.export.contract import FLAVOURS, PRECISIONS, PRED_LOGITS, PRED_MASKS, ContractError
from faseg.export.contract import LABELS_NAME as LABELS
from faseg.export.quantize import Calibration
from torch import nn

#: ``--outputs`` choices -> graph output names, in graph order.
OUTPUT_GROUPS: dict[str, tuple[str, ...]] = {
    LABELS: (LABELS,),
    CONFIDENCE: (CONFIDENCE,),
    "logits": (PRED_LOGITS, PRED_MASKS),
}
DEFAULT_OUTPUTS = (LABELS, CONFIDENCE)

#: Opset 17: GridSample-16 still spells its mode "bilinear" (opset 20 renamed it "linear", which TensorRT's
#: parser mis-reads as nearest, NVIDIA/TensorRT#4646), LayerNormalization-17 exists, and ORT 1.31 and
#: TensorRT 8.6–11 all parse it. The TorchScript exporter writes IR version 8 for it.
DEFAULT_OPSET = 17
MAX_IR_VERSION = 10  # ORT 1.31 accepts ≤ 13 but TensorRT's parser and older runtimes want ≤ 10


#: Capture strategies by name (:data:`faseg.export.onnx_capture.CAPTURE_STRATEGIES` implements each).
CAPTURE_NAMES = ("torchscript",)


class ExportError(ValueError):
    """The export cannot be done as asked; the message names the option or step and the problem."""


def parse_outputs(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'labels,confidence,logits' -> the choices in canonical order; unknown or empty -> ExportError."""
    if text is None:
        return DEFAULT_OUTPUTS
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in OUTPUT_GROUPS]
    if unknown:
        raise ExportError(
            f"unknown output name(s) {', '.join(map(repr, unknown))}; choose from {', '.join(OUTPUT_GROUPS)}"
        )
    if not items:
        raise ExportError(f"no outputs requested; choose from {', '.join(OUTPUT_GROUPS)}")
    return tuple(name for name in OUTPUT_GROUPS if name in items)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """:func:`faseg.export.contract.check_size`, failing with :class:`ExportError`."""
    try:
        return contract.check_size(size)
    except ContractError as exc:
        raise ExportError(str(exc)) from None


@dataclass(frozen=True)
class ExportOptions:
    """What to export. ``size`` None = the checkpoint's input size."""

    size: tuple[int, int] | None = None
    flavour: str = "portable"
    precision: str = "fp32"
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    opset: int = DEFAULT_OPSET
    capture: str = "torchscript"
    optimize: bool = True  # OptimizeHead: Einsum -> MatMul, ReduceMax + ArgMax -> TopK
    slim: bool = False
    example_batch: int = 2  # > 1, so that nothing batch-specific hides behind a size-1 dimension
    calibration: Calibration | None = None  # int8 only: where the activation ranges come from

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ExportError(f"unknown flavour {self.flavour!r}; choose from {', '.join(FLAVOURS)}")
        if self.precision not in PRECISIONS:
            raise ExportError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        if self.precision == "int8" and self.calibration is None:
            raise ExportError(
                "precision int8 needs calibration images: --calibration DATA (a dataset spec such as "
                "synthetic:val or folder:PATH)"
            )
        if self.precision != "int8" and self.calibration is not None:
            raise ExportError(f"calibration data is only used with precision int8, not {self.precision}")
        if self.size is not None:
            object.__setattr__(self, "size", check_size(self.size))
        object.__setattr__(self, "outputs", parse_outputs(self.outputs))
        if self.capture not in CAPTURE_NAMES:
            raise ExportError(f"unknown capture strategy {self.capture!r}; choose from {', '.join(CAPTURE_NAMES)}")
        if self.opset < 17:
            raise ExportError(f"opset {self.opset} is too old: GridSample / LayerNormalization need opset ≥ 17")
        if self.example_batch < 1:
            raise ExportError("example_batch must be ≥ 1")

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.outputs for name in OUTPUT_GROUPS[group])


@dataclass
class StepResult:
    """One pipeline step: what ran, how long, and what it found."""

    step: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    path: Path
    flavour: str
    precision: str
    input_size: tuple[int, int]
    opset: int
    ir_version: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    metadata: dict[str, str]
    custom_nodes: dict[str, int]
    num_nodes: int
    file_bytes: int
    steps: list[StepResult]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass
class ExportState:
    """What the steps share: the torch model and options in, the ONNX proto out."""

    model: nn.Module
    options: ExportOptions
    input_size: tuple[int, int]
    out: Path
    proto: Any = None  # onnx.ModelProto once captured
    calibration_images: int | None = None  # int8: images the ranges came from


class ExportStep(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def run(self, state: ExportState) -> dict[str, Any]:
        """Do the step on ``state``; return the details recorded in its :class:`StepResult`."""
