"""Capture: the torch model → an ONNX ``ModelProto``, by one explicitly chosen strategy
(:data:`CAPTURE_STRATEGIES`); a failed capture is reported, never retried with another method."""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from faseg.export import custom_ops
from faseg.export.contract import BATCH_DIM, INPUT_NAME, PRED_LOGITS, PRED_MASKS
from faseg.export.contract import CONFIDENCE_NAME as CONFIDENCE
from faseg.export.contract import LABELS_NAME as LABELS
from faseg.export.onnx_options import ExportState, ExportStep
from torch import Tensor, nn


class ExportGraph(nn.Module):
    """:class:`faseg.model.ServingHead`, returning only the requested outputs (in graph order)."""

    def __init__(self, model: nn.Module, output_names: tuple[str, ...]) -> None:
        super().__init__()
        from faseg.model import ServingHead

        self.output_names = output_names
        self.head = ServingHead(model, with_logits=PRED_LOGITS in output_names)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.head(images)
        named = dict(zip((LABELS, CONFIDENCE, PRED_LOGITS, PRED_MASKS), out))
        return tuple(named[name] for name in self.output_names)


def example_images(batch: int, size: tuple[int, int], seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size[0], size[1], 3), dtype=torch.uint8, generator=g)


class CaptureStrategy(ExportStep):
    """Turns the torch model into an ONNX ``ModelProto`` (``state.proto``)."""


class TorchScriptCapture(CaptureStrategy):
    """``torch.onnx.export(dynamo=False)``: trace + the TorchScript exporter's symbolics.

    The flavour's op implementations are swapped in through :func:`faseg.model.ops.register_kernel` for the
    duration of the trace (:func:`faseg.export.ops.use_kernels`) and restored afterwards. Python warnings of
    the trace (TracerWarnings about shape-derived Python numbers, which are constants for a fixed H×W) are
    recorded in the step details rather than raised.
    """

    name = "capture:torchscript"

    def run(self, state: ExportState) -> dict[str, Any]:
        import onnx
        from faseg.export.ops import flavour_kernels, use_kernels

        opts = state.options
        names = opts.output_names
        graph = ExportGraph(state.model, names).eval()
        example = example_images(opts.example_batch, state.input_size)
        buffer = io.BytesIO()
        custom_opsets = {custom_ops.DOMAIN: custom_ops.DOMAIN_VERSION} if opts.flavour == "plugin" else None
        with (
            use_kernels(flavour_kernels(opts.flavour)),
            torch.no_grad(),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opts.opset,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_axes={name: {0: BATCH_DIM} for name in (INPUT_NAME, *names)},
                custom_opsets=custom_opsets,
                do_constant_folding=True,
            )
        state.proto = onnx.load_model_from_string(buffer.getvalue())
        where = Counter(
            f"{Path(w.filename).name}:{w.lineno} {w.category.__name__}"
            for w in caught
            if not issubclass(w.category, DeprecationWarning)
        )
        return {"torch": torch.__version__, "warnings": dict(where)}


#: Capture strategies by name (the names are ``onnx_options.CAPTURE_NAMES``). One is chosen explicitly
#: (``ExportOptions.capture``); none falls back to another.
CAPTURE_STRATEGIES: dict[str, type[CaptureStrategy]] = {"torchscript": TorchScriptCapture}
