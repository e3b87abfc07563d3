"""``faseg export onnx``: a FASeg checkpoint → one ONNX file per input bucket (fixed H×W, dynamic batch).

The exported graph is :class:`faseg.model.ServingHead`:

- input ``images``: uint8 [N, H, W, 3], RGB, 0–255, NHWC (as image decoders produce it); normalisation by
  the model's pixel mean/std happens inside the graph. H and W are fixed per file (multiples of 32), N is
  the symbolic dimension ``N``.
- outputs (chosen with ``outputs``, graph order below):
  ``labels`` [N, H, W] uint8 (uint16 past 256 classes), ``confidence`` [N, H, W] float32,
  and with ``logits``: ``pred_logits`` [N, Q, K+1] and ``pred_masks`` [N, Q, H/4, W/4] float32.

Export is a fixed sequence of small steps (:func:`pipeline`), each returning a :class:`StepResult`; the
whole run returns an :class:`ExportResult`. The steps live by concern: options and results in
:mod:`~faseg.export.onnx_options`, capture in :mod:`~faseg.export.onnx_capture` (one explicitly chosen
strategy; a failed capture raises :class:`ExportError` naming it, there is no fallback to another method),
graph passes and the contract check in :mod:`~faseg.export.onnx_passes`, metadata, saving and the entry
points here. See ``docs/export.md`` for the reasons behind the exporter, opset and IR.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from faseg.export.contract import INPUT_LAYOUT, INPUT_NAME
from faseg.export.metadata import (
    FORMAT_VERSION,
    META_CALIBRATION,
    META_CLASSES,
    META_EXPORTER,
    META_FLAVOUR,
    META_FORMAT_VERSION,
    META_INPUT_LAYOUT,
    META_INPUT_SIZE,
    META_OUTPUTS,
    META_PALETTE,
    META_PRECISION,
    META_PRESET,
)
from faseg.export.onnx_capture import (
    CAPTURE_STRATEGIES,
    CaptureStrategy,
    ExportGraph,
    TorchScriptCapture,
    example_images,
)
from faseg.export.onnx_options import (
    DEFAULT_OPSET,
    DEFAULT_OUTPUTS,
    FLAVOURS,
    MAX_IR_VERSION,
    OUTPUT_GROUPS,
    PRECISIONS,
    ExportError,
    ExportOptions,
    ExportResult,
    ExportState,
    ExportStep,
    StepResult,
    check_size,
    parse_outputs,
)
from faseg.export.onnx_passes import CheckGraph, MixedPrecision, OptimizeHead, QuantizeInt8, Slim, describe_io
from torch import nn


class AddMetadata(ExportStep):
    """The ``faseg.*`` metadata props the service reads, plus producer fields."""

    name = "metadata"

    def run(self, state: ExportState) -> dict[str, Any]:
        from faseg import __version__

        metadata = export_metadata(state.model, state.input_size, state.options)
        if state.options.calibration is not None:
            metadata[META_CALIBRATION] = state.options.calibration.to_metadata(state.calibration_images)
        del state.proto.metadata_props[:]
        for key, value in metadata.items():
            prop = state.proto.metadata_props.add()
            prop.key, prop.value = key, value
        state.proto.producer_name = "faseg"
        state.proto.producer_version = __version__
        state.proto.doc_string = (
            f"FASeg {metadata[META_PRESET]} at {state.input_size[0]}x{state.input_size[1]}, "
            f"{state.options.flavour} flavour. Input {INPUT_NAME!r} {INPUT_LAYOUT}."
        )
        return {"keys": sorted(metadata)}


class Save(ExportStep):
    """Write the file atomically (temporary file in the target folder, then rename)."""

    name = "save"

    def run(self, state: ExportState) -> dict[str, Any]:
        import onnx

        out = state.out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            onnx.save_model(state.proto, tmp)
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is read by other users (images, services)
            os.replace(tmp, out)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return {"bytes": out.stat().st_size}


def pipeline(options: ExportOptions) -> list[ExportStep]:
    """The steps of one export, in order."""
    steps: list[ExportStep] = [CAPTURE_STRATEGIES[options.capture]()]
    if options.optimize:
        steps.append(OptimizeHead())
    if options.slim:
        steps.append(Slim())
    if options.precision == "fp16":
        steps.append(MixedPrecision())
    if options.precision == "int8":
        steps.append(QuantizeInt8())
    steps += [CheckGraph(), AddMetadata(), Save()]
    return steps


# ---------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------


def export_metadata(model: nn.Module, input_size: tuple[int, int], options: ExportOptions) -> dict[str, str]:
    from faseg.model.checkpoint import default_classes, default_palette

    cfg = model.cfg
    info = getattr(model, "checkpoint_info", None)
    classes = list(info.classes) if info is not None else default_classes(cfg.num_classes)
    palette = [list(map(int, p)) for p in (info.palette if info is not None else default_palette(cfg.num_classes))]
    return {
        META_CLASSES: json.dumps(classes),
        META_PALETTE: json.dumps(palette),
        META_INPUT_SIZE: json.dumps(list(input_size)),
        META_PRESET: cfg.name,
        META_FLAVOUR: options.flavour,
        META_PRECISION: options.precision,
        META_FORMAT_VERSION: FORMAT_VERSION,
        META_OUTPUTS: json.dumps(list(options.output_names)),
        META_INPUT_LAYOUT: INPUT_LAYOUT,
        META_EXPORTER: f"{options.capture} (torch {torch.__version__}, opset {options.opset})",
    }


def export_model(model: nn.Module, out: str | os.PathLike[str], options: ExportOptions | None = None) -> ExportResult:
    """Export a loaded FASeg model (``model.checkpoint_info`` supplies classes, palette and default size)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    options = options or ExportOptions()
    info = getattr(model, "checkpoint_info", None)
    size = options.size or (info.input_size if info is not None else model.cfg.default_input_size)
    state = ExportState(model=model.eval(), options=options, input_size=check_size(size), out=Path(out))
    results: list[StepResult] = []
    for step in pipeline(options):
        start = time.perf_counter()
        try:
            details = step.run(state)
        except ExportError:
            raise
        except Exception as exc:  # every other failure is reported with the step that failed
            raise ExportError(f"export step {step.name!r} failed: {type(exc).__name__}: {exc}") from exc
        results.append(StepResult(step.name, round(time.perf_counter() - start, 3), details))
    check = next(r for r in results if r.step == CheckGraph.name).details
    proto = state.proto
    return ExportResult(
        path=state.out,
        flavour=options.flavour,
        precision=options.precision,
        input_size=state.input_size,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        ir_version=proto.ir_version,
        inputs=check["inputs"],
        outputs=check["outputs"],
        metadata={p.key: p.value for p in proto.metadata_props},
        custom_nodes=check["custom_nodes"],
        num_nodes=check["num_nodes"],
        file_bytes=results[-1].details["bytes"],
        steps=results,
    )


def load_checkpoint(checkpoint: str | os.PathLike[str]) -> nn.Module:
    """``from_pretrained`` with a clear error for a directory that does not load."""
    from faseg.model.checkpoint import from_pretrained

    try:
        return from_pretrained(checkpoint)
    except FileNotFoundError as exc:
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not load: {exc}") from exc
    except ValueError as exc:  # CheckpointError and config errors
        raise ExportError(f"checkpoint {str(checkpoint)!r} does not load: {exc}") from exc


def export_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], options: ExportOptions | None = None
) -> ExportResult:
    """Load a checkpoint directory (``save_pretrained`` layout) and export it."""
    return export_model(load_checkpoint(checkpoint), out, options)


__all__ = [
    "CAPTURE_STRATEGIES",
    "DEFAULT_OPSET",
    "DEFAULT_OUTPUTS",
    "FLAVOURS",
    "INPUT_NAME",
    "MAX_IR_VERSION",
    "OUTPUT_GROUPS",
    "PRECISIONS",
    "AddMetadata",
    "CaptureStrategy",
    "CheckGraph",
    "ExportError",
    "ExportGraph",
    "ExportOptions",
    "ExportResult",
    "ExportState",
    "ExportStep",
    "MixedPrecision",
    "OptimizeHead",
    "QuantizeInt8",
    "Save",
    "Slim",
    "StepResult",
    "TorchScriptCapture",
    "check_size",
    "describe_io",
    "example_images",
    "export_checkpoint",
    "export_metadata",
    "export_model",
    "load_checkpoint",
    "parse_outputs",
    "pipeline",
]
