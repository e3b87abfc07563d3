"""``faseg export onnx``: a FASeg checkpoint → one ONNX file per input bucket (fixed H×W, dynamic batch).

The exported graph is :class:`faseg.model.ServingHead`:

- input ``images``: uint8 [N, H, W, 3], RGB, 0–255, NHWC (as image decoders produce it); normalisation by
  the model's pixel mean/std happens inside the graph. H and W are fixed per file (multiples of 32), N is
  the symbolic dimension ``N``.
- outputs (chosen with ``outputs``, graph order below):
  ``labels`` [N, H, W] uint8 (uint16 past 256 classes), ``confidence`` [N, H, W] float32,
  and with ``logits``: ``pred_logits`` [N, Q, K+1] and ``pred_masks`` [N, Q, H/4, W/4] float32.

Export is a fixed sequence of small steps (:data:`PIPELINE`), each returning a :class:`StepResult`; the
whole run returns an :class:`ExportResult`. Capture is one explicitly chosen strategy
(:data:`CAPTURE_STRATEGIES`); a failed capture raises :class:`ExportError` naming the strategy — there is no
fallback to another capture method. See ``docs/export.md`` for the reasons behind the exporter, opset and IR.
"""

from __future__ import annotations

import abc
import contextlib
import io
import json
import os
import re
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from faseg.export import custom_ops
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
from faseg.export.quantize import Calibration
from torch import Tensor, nn

INPUT_NAME = "images"
LABELS = "labels"
CONFIDENCE = "confidence"
PRED_LOGITS = "pred_logits"
PRED_MASKS = "pred_masks"
#: ``--outputs`` choices -> graph output names, in graph order.
OUTPUT_GROUPS: dict[str, tuple[str, ...]] = {
    LABELS: (LABELS,),
    CONFIDENCE: (CONFIDENCE,),
    "logits": (PRED_LOGITS, PRED_MASKS),
}
DEFAULT_OUTPUTS = (LABELS, CONFIDENCE)
BATCH_DIM = "N"
SIZE_MULTIPLE = 32

FLAVOURS = ("portable", "plugin")
PRECISIONS = ("fp32", "fp16", "int8")
#: Opset 17: GridSample-16 still spells its mode "bilinear" (opset 20 renamed it "linear", which TensorRT's
#: parser mis-reads as nearest, NVIDIA/TensorRT#4646), LayerNormalization-17 exists, and ORT 1.31 and
#: TensorRT 8.6–11 all parse it. The TorchScript exporter writes IR version 8 for it.
DEFAULT_OPSET = 17
MAX_IR_VERSION = 10  # ORT 1.31 accepts ≤ 13 but TensorRT's parser and older runtimes want ≤ 10

INPUT_LAYOUT = "NHWC uint8 RGB 0-255"


class ExportError(ValueError):
    """The export cannot be done as asked; the message names the option or step and the problem."""


# ---------------------------------------------------------------------------------------------------
# options and results
# ---------------------------------------------------------------------------------------------------


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
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ExportError(
            f"input size {h}x{w} is not a multiple of {SIZE_MULTIPLE}; export one file per bucket with H and W "
            f"multiples of {SIZE_MULTIPLE} (e.g. {max(SIZE_MULTIPLE, round(h / 32) * 32)}x"
            f"{max(SIZE_MULTIPLE, round(w / 32) * 32)}) and letterbox images into it"
        )
    return h, w


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
        if self.capture not in CAPTURE_STRATEGIES:
            raise ExportError(f"unknown capture strategy {self.capture!r}; choose from {', '.join(CAPTURE_STRATEGIES)}")
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


# ---------------------------------------------------------------------------------------------------
# the graph that is exported
# ---------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------------


class ExportStep(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def run(self, state: ExportState) -> dict[str, Any]:
        """Do the step on ``state``; return the details recorded in its :class:`StepResult`."""


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


#: Capture strategies by name. One is chosen explicitly (``ExportOptions.capture``); none falls back to another.
CAPTURE_STRATEGIES: dict[str, type[CaptureStrategy]] = {"torchscript": TorchScriptCapture}


class Slim(ExportStep):
    """Optional graph slimming with ``onnxslim`` (constant folding, dead-node and duplicate removal)."""

    name = "slim"

    def run(self, state: ExportState) -> dict[str, Any]:
        try:
            import onnxslim
        except ImportError:
            raise ExportError("--slim needs the onnxslim package: pip install onnxslim") from None
        before = len(state.proto.graph.node)
        slimmed = onnxslim.slim(state.proto)
        if slimmed is None:
            raise ExportError("onnxslim returned no model")
        # onnxslim may raise the IR version; keep the one the exporter chose.
        slimmed.ir_version = min(slimmed.ir_version, state.proto.ir_version)
        # It leaves custom-op outputs as untyped value infos, which onnx's shape inference rejects
        # ("Invalid tensor data type 0"); drop them (the check step infers shapes again).
        untyped = [v for v in slimmed.graph.value_info if not v.type.tensor_type.elem_type]
        for value_info in untyped:
            slimmed.graph.value_info.remove(value_info)
        state.proto = slimmed
        return {"nodes_before": before, "nodes_after": len(slimmed.graph.node), "onnxslim": onnxslim.__version__}


class OptimizeHead(ExportStep):
    """Rewrite the two costliest standard-op patterns of the serving head; numerically the same graph.

    - ``Einsum`` ``bqc,bchw->bqhw`` (mask logits, once per prediction) and ``bqc,bqhw->bchw`` (the semantic
      scores, [N, K, H, W] at full resolution) become ``Reshape`` → ``MatMul`` → ``Reshape`` (plus a
      ``Transpose`` of the small class-probability operand). ONNX Runtime's CPU Einsum is ~1.5× slower than
      its MatMul on the 512² head, and TensorRT fuses MatMul better (mmdeploy#1728 did the same rewrite).
    - ``ReduceMax`` + ``ArgMax`` over the class axis of the same tensor (``semseg.max(dim=1)``) become one
      ``TopK(k=1)`` and two ``Squeeze``: one pass over [N, K, H, W] instead of two. ``TopK`` keeps the lower
      index on ties, as ``ArgMax`` (``select_last_index=0``) does.

    The replacement nodes write the original output names, so nothing downstream changes.
    """

    name = "optimize"

    def run(self, state: ExportState) -> dict[str, Any]:
        from onnx import TensorProto, helper

        graph = state.proto.graph
        nodes = list(graph.node)
        new_nodes: list[Any] = []
        constants: dict[tuple[int, ...], str] = {}
        reshaped: dict[str, str] = {}  # B operand -> its [N, X, H·W] reshape (shared by every einsum)
        counter = Counter()

        def const(values: list[int]) -> str:
            key = tuple(values)
            if key not in constants:
                name = f"faseg_opt/const_{len(constants)}"
                graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
                constants[key] = name
            return constants[key]

        def fresh(tag: str) -> str:
            counter["names"] += 1
            return f"faseg_opt/{tag}_{counter['names']}"

        def shape_slice(tensor: str, start: int, end: int) -> str:
            shape, out = fresh("shape"), fresh("slice")
            new_nodes.append(helper.make_node("Shape", [tensor], [shape], name=shape))
            new_nodes.append(
                helper.make_node("Slice", [shape, const([start]), const([end]), const([0])], [out], name=out)
            )
            return out

        def flat_hw(tensor: str) -> str:  # (N, X, H, W) -> (N, X, H·W)
            if tensor not in reshaped:
                out = fresh("flat")
                new_nodes.append(helper.make_node("Reshape", [tensor, const([0, 0, -1])], [out], name=out))
                reshaped[tensor] = out
            return reshaped[tensor]

        pairs = self._max_argmax_pairs(nodes)
        skip = {id(n) for pair in pairs.values() for n in pair}
        for node in nodes:
            equation = self._equation(node)
            if equation in ("bqc,bchw->bqhw", "bqc,bqhw->bchw"):
                a, b = node.input
                left = a
                if equation == "bqc,bqhw->bchw":  # (N, Q, K)ᵀ @ (N, Q, H·W)
                    left = fresh("transpose")
                    new_nodes.append(helper.make_node("Transpose", [a], [left], name=left, perm=[0, 2, 1]))
                product = fresh("matmul")
                new_nodes.append(helper.make_node("MatMul", [left, flat_hw(b)], [product], name=product))
                lead = shape_slice(left, 0, 2)  # [N, Q] or [N, K]
                target = fresh("target")
                new_nodes.append(
                    helper.make_node("Concat", [lead, shape_slice(b, 2, 4)], [target], name=target, axis=0)
                )
                new_nodes.append(helper.make_node("Reshape", [product, target], list(node.output), name=node.name))
                counter["einsum_to_matmul"] += 1
            elif id(node) in skip:
                if node.op_type != "ReduceMax" or node is not pairs[node.input[0]][0]:
                    continue
                reduce_max, arg_max = pairs[node.input[0]]
                values, indices = fresh("topk_values"), fresh("topk_indices")
                new_nodes.append(
                    helper.make_node("TopK", [node.input[0], const([1])], [values, indices], name=fresh("topk"), axis=1)
                )
                new_nodes.append(
                    helper.make_node("Squeeze", [values, const([1])], list(reduce_max.output), name=reduce_max.name)
                )
                new_nodes.append(
                    helper.make_node("Squeeze", [indices, const([1])], list(arg_max.output), name=arg_max.name)
                )
                counter["max_argmax_to_topk"] += 1
            else:
                new_nodes.append(node)
        del graph.node[:]
        graph.node.extend(new_nodes)
        return {k: v for k, v in counter.items() if k != "names"}

    @staticmethod
    def _equation(node: Any) -> str | None:
        if node.op_type != "Einsum" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            return None
        for attr in node.attribute:
            if attr.name == "equation":
                return attr.s.decode().replace(" ", "")
        return None

    @staticmethod
    def _max_argmax_pairs(nodes: list[Any]) -> dict[str, tuple[Any, Any]]:
        """input name -> (ReduceMax, ArgMax) both over axis 1 without keepdims, ReduceMax first in the graph."""

        def attrs(node: Any) -> dict[str, Any]:
            from onnx import helper

            return {a.name: helper.get_attribute_value(a) for a in node.attribute}

        reduce_max, arg_max = {}, {}
        for node in nodes:
            a = attrs(node)
            if node.op_type == "ReduceMax" and len(node.input) == 1 and a.get("axes") == [1] and a.get("keepdims") == 0:
                reduce_max.setdefault(node.input[0], node)
            elif (
                node.op_type == "ArgMax"
                and a.get("axis") == 1
                and a.get("keepdims") == 0
                and not a.get("select_last_index", 0)
            ):
                arg_max.setdefault(node.input[0], node)
        return {
            name: (reduce_max[name], arg_max[name])
            for name in reduce_max.keys() & arg_max.keys()
            if nodes.index(reduce_max[name]) < nodes.index(arg_max[name])
        }


class MixedPrecision(ExportStep):
    """``--precision fp16``: an fp16 graph with the precision-sensitive parts held in fp32 behind Casts.

    Held in fp32 (export_anchors.md §3 "FP16 accuracy", spec §7): the backbone's input stem (its first
    convolution: with it in fp16 the demo model's median mask-logit error was 0.095 and 99.1% of labels agreed;
    with it in fp32, 0.008 and 99.8%, for 3 of 837 fp16 nodes); the deformable-attention core of every
    pixel-decoder layer (sampling locations, attention-weight softmax, bilinear sampling and the weighted sum;
    its four Linear projections run fp16) or its plugin node; HRCA's window scores (the head-summed 1/32
    attention) and every TopK; and, by :mod:`faseg.export.mixed_precision`'s rules, every comparison (the
    masked-attention and pooling thresholds decide on fp32 values), the positional encodings and shape
    arithmetic. The rest (backbone, pixel-decoder convolutions and FFNs, the transformer decoder's linear
    layers and attention, the head's mask products) runs fp16. Graph inputs and outputs keep their types.
    """

    name = "fp16"
    STEM_SCOPE = re.compile(r"/backbone/(stem|patch_embed)/")
    MSDA_SCOPE = re.compile(r"/pixel_decoder/transformer/layers\.\d+/self_attn/")
    MSDA_PROJECTIONS = re.compile(r"/self_attn/(value_proj|sampling_offsets|attention_weights|output_proj)/")

    def run(self, state: ExportState) -> dict[str, Any]:
        from faseg.export.mixed_precision import MixedPrecisionError, convert_to_mixed_precision

        keep = self.keep_fp32_rule(state.proto)
        try:
            state.proto, report = convert_to_mixed_precision(state.proto, keep)
        except MixedPrecisionError as exc:
            raise ExportError(f"fp16 conversion failed: {exc}") from exc
        sensitive = Counter(
            n.op_type for n in state.proto.graph.node if n.op_type == "GridSample" or n.domain not in ("", "ai.onnx")
        )
        held = report.kept_by_rule.get("deformable attention", 0) + report.kept_by_rule.get("plugin op", 0)
        if sum(sensitive.values()) and not held:
            raise ExportError(f"fp16: no deformable-attention node matched the fp32 rules (found {dict(sensitive)})")
        return report.to_dict()

    @classmethod
    def keep_fp32_rule(cls, proto: Any) -> Any:
        producers = {out: node.name for node in proto.graph.node for out in node.output}
        topk_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "TopK"]
        topk_sources = {producers[name] for name in topk_inputs if name in producers}

        def rule(node: Any) -> str | None:
            if node.domain not in ("", "ai.onnx"):
                return "plugin op"
            if cls.STEM_SCOPE.search(node.name):
                return "input stem"
            if cls.MSDA_SCOPE.search(node.name) and not cls.MSDA_PROJECTIONS.search(node.name):
                return "deformable attention"
            if node.op_type == "TopK" or node.name in topk_sources:
                return "top-k and its scores"
            return None

        return rule


class QuantizeInt8(ExportStep):
    """``--precision int8``: static QDQ int8 of the convolutions and matrix multiplies (:mod:`.quantize`).

    Calibrates on ``options.calibration`` (images letterboxed into the bucket); custom-domain nodes, every op
    that is not a Conv / MatMul / Gemm, and the node groups of :data:`faseg.export.quantize.FLOAT_GROUPS`
    stay fp32. The number of images actually used is recorded in the metadata.
    """

    name = "int8"

    def run(self, state: ExportState) -> dict[str, Any]:
        from faseg.export.quantize import QuantizationError, calibration_images, quantize_int8

        calibration = state.options.calibration
        assert calibration is not None  # ExportOptions guarantees it for int8
        try:
            images = calibration_images(calibration.data, state.input_size, calibration.num_images)
            state.proto, report = quantize_int8(state.proto, images, plugin=state.options.flavour == "plugin")
        except QuantizationError as exc:
            raise ExportError(f"int8: {exc}") from exc
        state.calibration_images = len(images)
        return report.to_dict()


class CheckGraph(ExportStep):
    """``onnx.checker``, shape inference, and the serving contract (I/O names, dtypes, dims, custom nodes)."""

    name = "check"

    def run(self, state: ExportState) -> dict[str, Any]:
        import onnx

        proto = state.proto
        if proto.ir_version > MAX_IR_VERSION:
            proto.ir_version = MAX_IR_VERSION
        try:
            onnx.checker.check_model(proto)
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False, data_prop=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"the exported graph fails onnx.checker / shape inference: {exc}") from exc
        state.proto = inferred
        inputs, outputs = describe_io(inferred)
        self._check_io(state, inputs, outputs)
        custom = self._check_custom_nodes(state)
        return {"inputs": inputs, "outputs": outputs, "custom_nodes": custom, "num_nodes": len(inferred.graph.node)}

    def _check_io(self, state: ExportState, inputs: dict, outputs: dict) -> None:
        h, w = state.input_size
        expected_in = {INPUT_NAME: {"dtype": "uint8", "shape": [BATCH_DIM, h, w, 3]}}
        if inputs != expected_in:
            raise ExportError(f"exported input {inputs} does not match the contract {expected_in}")
        names = list(state.options.output_names)
        if list(outputs) != names:
            raise ExportError(f"exported outputs {list(outputs)} differ from the requested {names}")
        label_dtype = "uint8" if state.model.num_classes <= 256 else "uint16"
        want_dtype = {LABELS: label_dtype, CONFIDENCE: "float32", PRED_LOGITS: "float32", PRED_MASKS: "float32"}
        for name, info in outputs.items():
            if info["dtype"] != want_dtype[name]:
                raise ExportError(f"output {name!r} is {info['dtype']}, expected {want_dtype[name]}")
            if not info["shape"] or info["shape"][0] != BATCH_DIM:
                raise ExportError(f"output {name!r} has shape {info['shape']}; its batch dim must be {BATCH_DIM!r}")

    def _check_custom_nodes(self, state: ExportState) -> dict[str, int]:
        proto = state.proto
        custom = Counter(f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx"))
        if state.options.flavour == "portable":
            if custom:
                raise ExportError(f"the portable flavour must hold standard ONNX ops only, found {dict(custom)}")
            return {}
        model_cfg = state.model.cfg
        want = {f"{custom_ops.DOMAIN}::{custom_ops.MS_DEFORM_ATTN_OP}": model_cfg.pixel_decoder.encoder_layers}
        if model_cfg.decoder.hrca != "off":
            hr_layers = sum(1 for i in range(model_cfg.decoder.dec_layers) if i % 4 == 3)
            want[f"{custom_ops.DOMAIN}::{custom_ops.TOPK_CROSS_ATTN_OP}"] = hr_layers
        if dict(custom) != {k: v for k, v in want.items() if v}:
            raise ExportError(f"plugin flavour: expected custom nodes {want}, found {dict(custom)}")
        opsets = {o.domain: o.version for o in proto.opset_import}
        if opsets.get(custom_ops.DOMAIN) != custom_ops.DOMAIN_VERSION:
            raise ExportError(
                f"plugin flavour: opset import ({custom_ops.DOMAIN!r}, {custom_ops.DOMAIN_VERSION}) missing"
            )
        for node in proto.graph.node:
            if node.domain != custom_ops.DOMAIN:
                continue
            attrs = {a.name: a for a in node.attribute}
            for key, value in custom_ops.PLUGIN_ATTRIBUTES.items():
                if key not in attrs or attrs[key].s.decode() != value:
                    raise ExportError(f"{node.op_type} node {node.name!r}: attribute {key} must be {value!r}")
        return dict(custom)


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


def describe_io(proto: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """{name: {"dtype", "shape"}} of the graph inputs (initializers excluded) and outputs."""
    import onnx

    initializers = {i.name for i in proto.graph.initializer}

    def info(value_info: Any) -> dict[str, Any]:
        tensor = value_info.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "unknown"
        shape = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
        return {"dtype": dtype, "shape": shape}

    inputs = {v.name: info(v) for v in proto.graph.input if v.name not in initializers}
    outputs = {v.name: info(v) for v in proto.graph.output}
    return inputs, outputs


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
    "OUTPUT_GROUPS",
    "PRECISIONS",
    "AddMetadata",
    "CaptureStrategy",
    "CheckGraph",
    "ExportError",
    "ExportGraph",
    "ExportOptions",
    "ExportResult",
    "ExportStep",
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
