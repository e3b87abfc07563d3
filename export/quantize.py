"""fp32 ONNX graph -> static int8 QDQ graph for CPU runtimes (``faseg export onnx --precision int8``).

ONNX Runtime's quantisation tools (``onnxruntime.quantization.quantize_static``) do the rewriting: QDQ format,
uint8 activations (asymmetric, one scale per tensor) and int8 weights (symmetric, one scale per output
channel) in 7 bits (``reduce_range``): x86 CPUs without VNNI multiply uint8 × int8 with ``vpmaddubsw``, whose
16-bit pair sums saturate with full-range weights (255 · 127 · 2 > 32767). On the AVX2 development machine
full 8-bit weights dropped the demo model's label agreement with fp32 on photographs from 97.4 % to 93.6 %.

Only ``Conv``, ``MatMul`` and ``Gemm`` nodes are quantised, and of those only the groups not in
:data:`FLOAT_GROUPS`; every other op (deformable-attention sampling, softmax, normalisation, HRCA's scores and
top-k, the serving head's reductions, and any custom-domain node of the plugin flavour) computes in fp32 as
exported. The groups held in float were chosen from a per-group sensitivity measurement on the demo model
(``benchmarks/int8_accuracy.py --sensitivity``; numbers and reasons in ``docs/export.md`` §7).

Calibration is MinMax over images from a dataset spec (``synthetic:val``, ``folder:PATH``, ... — what
``faseg eval --data`` takes), letterboxed into the file's input size as the service does. We collect the
ranges ourselves (:func:`collect_ranges`) rather than through ``quantize_static``'s calibrator, because that
calibrator opens its own ``InferenceSession`` without our custom-op library, so it cannot run plugin-flavour
graphs; the ranges reach ``quantize_static`` through its calibration-cache file (``save_tensors_data``).

The steps, on a fp32 graph as exported:

1. :func:`fold_weight_identities` — weights shared between layers come out of the exporter as
   ``Identity(initializer)``; they are rewired to the initializer so the quantiser sees them as weights.
2. :func:`quantizable_nodes` — the Conv / MatMul / Gemm nodes, each with its :func:`node_group`.
3. :func:`collect_ranges` — min / max of every input and output of the nodes to quantise, over the
   calibration images (one image per run).
4. ``quantize_static`` with those ranges and ``nodes_to_quantize``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contract import INPUT_NAME, letterbox
from .session import SessionConfig, session_options

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax",)
#: Ops whose output stays float: ONNX Runtime then runs DQ → MatMul as ``MatMulIntegerToFloat`` (fp32 out,
#: bias Add fused) instead of an int8 ``QLinearMatMul`` followed by a DequantizeLinear and a float Add.
FLOAT_OUTPUT_OPS = ("MatMul",)
DEFAULT_CALIBRATION_IMAGES = 16

#: Node groups, first match wins (on the exporter's scoped node names). ``weights`` = a MatMul / Gemm / Conv
#: whose second input is a stored weight; ``products`` = a MatMul of two computed tensors.
GROUPS = (
    "input stem",
    "backbone early stages",
    "backbone late stages",
    "pixel decoder convs",
    "deformable-attention sampling",
    "deformable-attention projections",
    "pixel decoder ffn",
    "decoder memory projections",
    "decoder linear",
    "decoder attention products",
    "decoder pooling and hrca products",
    "mask embed",
    "mask products and serving head",
)
_SCOPES = (
    ("input stem", re.compile(r"/backbone/(stem|patch_embed)/")),
    # ResNet res2 / res3 (strides 4 and 8); Swin's first two stages
    ("backbone early stages", re.compile(r"/backbone/(res2|res3|layers\.[01])/")),
    ("backbone late stages", re.compile(r"/backbone/")),
    (
        "deformable-attention sampling",
        re.compile(r"/pixel_decoder/transformer/layers\.\d+/self_attn/(sampling_offsets|attention_weights)/"),
    ),
    (
        "deformable-attention projections",
        re.compile(r"/pixel_decoder/transformer/layers\.\d+/self_attn/(value_proj|output_proj)/"),
    ),
    ("pixel decoder ffn", re.compile(r"/pixel_decoder/transformer/layers\.\d+/linear\d")),
    ("pixel decoder convs", re.compile(r"/pixel_decoder/")),
    ("mask embed", re.compile(r"/predictor/mask_embed")),
    # masked cross-attention's key and value projections, over every memory token of the level (in_proj's k, v)
    (
        "decoder memory projections",
        re.compile(r"/predictor/transformer_cross_attention_layers\.\d+/multihead_attn/MatMul_[12]$"),
    ),
)

#: Held in float, with the measured reason: label agreement with the fp32 file when only that group is
#: quantised (demo model, 256×256, 7 photographs + 8 synthetic images, `benchmarks/int8_accuracy.py
#: --sensitivity`), and the compute that quantising it would save at faseg_r50_ade20k 512×512.
FLOAT_GROUPS: dict[str, str] = {
    "input stem": "one convolution, alone it moved 3.6 % of labels (96.4 %); 0.6 of 75 GMAC",
    "backbone early stages": "res2 + res3 alone moved 1.2 % of labels (98.8 %; res4 + res5 alone: 99.8 %)",
    "decoder linear": "91 small layers on 100 queries (query projections, FFNs): 0.3 % of labels, little compute",
    "decoder attention products": "activation × activation Q·Kᵀ / attention·V: 0.6 % of labels",
    "decoder pooling and hrca products": "query pooling and HRCA attention products (activation × activation)",
    "mask embed": "the query → mask-embedding MLP: 0.2 % of labels, tiny compute",
    "mask products and serving head": "mask logits and per-class scores: 0.8 % of labels",
}


class QuantizationError(ValueError):
    """int8 export cannot be done as asked (no calibration images, bad dataset spec, ...)."""


@dataclass(frozen=True)
class Calibration:
    """Where the activation ranges come from; recorded in the file's ``faseg.calibration`` metadata."""

    data: str
    num_images: int = DEFAULT_CALIBRATION_IMAGES
    method: str = "minmax"

    def __post_init__(self) -> None:
        if not self.data or not self.data.strip():
            raise QuantizationError("int8 calibration needs a dataset spec (e.g. synthetic:val or folder:PATH)")
        if self.num_images < 1:
            raise QuantizationError(f"--calibration-images must be ≥ 1, not {self.num_images}")
        if self.method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"unknown calibration method {self.method!r}; choose from {', '.join(CALIBRATION_METHODS)}"
            )

    def to_metadata(self, images_used: int | None = None) -> str:
        count = self.num_images if images_used is None else images_used
        return json.dumps({"data": self.data, "num_images": count, "method": self.method})


@dataclass
class QuantizationReport:
    quantized_nodes: int = 0
    float_nodes: int = 0
    calibration_images: int = 0
    quantized_by_group: dict[str, int] = field(default_factory=dict)
    float_by_group: dict[str, int] = field(default_factory=dict)
    qdq_nodes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# calibration images
# ---------------------------------------------------------------------------------------------------


def calibration_dataset(data: str, split: str = "train") -> Any:
    """The dataset of a calibration spec (as ``faseg eval --data`` builds it); a clear error when it has no images.

    Cheap for every kind (images are read lazily), so the CLI checks the spec before the export starts.
    """
    from faseg.model.data import build_dataset

    try:
        dataset = build_dataset(data, split=split)
    except (ValueError, OSError) as exc:  # bad spec, missing folder / classes.json, empty dataset
        raise QuantizationError(f"calibration data {data!r} yields no images: {exc}") from exc
    if len(dataset) == 0:
        raise QuantizationError(f"calibration data {data!r} yields no images; int8 needs at least one")
    return dataset


def calibration_images(data: str, size: tuple[int, int], num_images: int, split: str = "train") -> np.ndarray:
    """uint8 (N, H, W, 3): ``num_images`` images spread evenly over the dataset, letterboxed into ``size``.

    ``data`` is a dataset spec as ``faseg eval --data`` takes it (``split`` applies to ``KIND:PATH`` specs).
    """
    dataset = calibration_dataset(data, split)
    count = min(num_images, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    return np.stack([letterbox(dataset[int(i)].image, size) for i in indices])


def calibration_reader(images: np.ndarray) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` feeding ``images`` one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self._items, None)
            return None if image is None else {INPUT_NAME: image[None]}

        def __len__(self) -> int:
            return len(images)

    return ImageReader()


# ---------------------------------------------------------------------------------------------------
# graph analysis
# ---------------------------------------------------------------------------------------------------


def fold_weight_identities(proto: Any) -> int:
    """Rewire readers of ``Identity(initializer)`` to the initializer; return how many Identities went."""
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs
    }
    if not alias:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def read_shapes_before_dequantize(proto: Any) -> int:
    """Point every ``Shape`` that reads a ``DequantizeLinear`` output at that node's input; return how many.

    The quantiser rewires *every* reader of a quantised tensor to its ``DequantizeLinear``, ``Shape`` nodes
    included, so ONNX Runtime keeps that DequantizeLinear (a full pass over the tensor) alive after fusing the
    pair into an int8 kernel, only for its shape. Quantise / dequantise keep the shape, so the rewired graph
    computes the same values.
    """
    dequantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    count = 0
    for node in proto.graph.node:
        if node.op_type == "Shape" and node.input[0] in dequantized:
            node.input[0] = dequantized[node.input[0]]
            count += 1
    return count


def node_group(node: Any, weights: set[str]) -> str:
    """The sensitivity group of a Conv / MatMul / Gemm node (see :data:`GROUPS`)."""
    for group, scope in _SCOPES:
        if scope.search(node.name):
            return group
    has_weight = len(node.input) > 1 and node.input[1] in weights
    if "/predictor/" in node.name:
        if has_weight:
            return "decoder linear"
        if re.search(r"/(multihead_attn|self_attn)/", node.name):
            return "decoder attention products"
        return "decoder pooling and hrca products"
    return "mask products and serving head"


def quantizable_nodes(proto: Any) -> dict[str, str]:
    """{node name: group} of the graph's standard-domain Conv / MatMul / Gemm nodes."""
    weights = {t.name for t in proto.graph.initializer}
    return {
        n.name: node_group(n, weights)
        for n in proto.graph.node
        if n.op_type in QUANTIZED_OPS and n.domain in ("", "ai.onnx")
    }


# ---------------------------------------------------------------------------------------------------
# calibration and quantisation
# ---------------------------------------------------------------------------------------------------


def _calibration_session(proto: Any, plugin: bool) -> Any:
    """A CPU session over the in-memory graph (with its extra range outputs), built with the serving options."""
    import onnxruntime as ort

    options = session_options(SessionConfig(device="cpu", graph_optimization="basic"), plugin=plugin)
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def collect_ranges(proto: Any, tensors: Iterable[str], reader: Any, *, plugin: bool) -> dict[str, tuple]:
    """{tensor: (min, max)} for the float ``tensors`` of ``proto``, over the feeds of a ``CalibrationDataReader``."""
    import onnx
    from onnx import TensorProto, helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(proto)
    existing = {o.name for o in augmented.graph.output}
    names = sorted(set(tensors))
    for name in names:
        if name not in existing:
            augmented.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = _calibration_session(augmented, plugin)
    low = {name: np.inf for name in names}
    high = {name: -np.inf for name in names}
    while (feed := reader.get_next()) is not None:
        values = session.run(names, feed)
        for name, value in zip(names, values):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    return {name: (np.float32(low[name]), np.float32(high[name])) for name in names}


def _float_inputs_outputs(proto: Any, node_names: set[str]) -> set[str]:
    """Non-weight inputs and the outputs of the named nodes (what the QDQ quantiser needs ranges for)."""
    initializers = {t.name for t in proto.graph.initializer}
    tensors: set[str] = set()
    for node in proto.graph.node:
        if node.name in node_names:
            tensors.update(name for name in (*node.input[:2], *node.output) if name and name not in initializers)
    return tensors


def calibrate(proto: Any, images: np.ndarray, *, plugin: bool) -> dict[str, tuple]:
    """Ranges of the tensors around every quantisable node of ``proto`` (for :func:`quantize_int8` ``ranges``)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    fold_weight_identities(model)
    tensors = _float_inputs_outputs(model, set(quantizable_nodes(model)))
    return collect_ranges(model, tensors, calibration_reader(images), plugin=plugin)


def quantize_int8(
    proto: Any,
    images: np.ndarray,
    *,
    plugin: bool,
    float_groups: Iterable[str] = tuple(FLOAT_GROUPS),
    ranges: dict[str, tuple] | None = None,
    reduce_range: bool = True,
) -> tuple[Any, QuantizationReport]:
    """Return a QDQ int8 ModelProto of the fp32 ``proto`` and what was quantised.

    ``images``: uint8 (N, H, W, 3) calibration images; ``plugin``: register the custom-op library for the
    calibration runs; ``float_groups``: the :data:`GROUPS` held in float; ``ranges``: tensor ranges already
    collected by :func:`calibrate` on the same graph (then ``images`` only counts for the report);
    ``reduce_range``: 7-bit weights (see the module docstring).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if len(images) == 0:
        raise QuantizationError("no calibration images; int8 needs at least one")
    float_groups = set(float_groups)
    unknown = float_groups - set(GROUPS)
    if unknown:
        raise QuantizationError(f"unknown node group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    fold_weight_identities(model)
    groups = quantizable_nodes(model)
    chosen = {name for name, group in groups.items() if group not in float_groups}
    report = QuantizationReport(calibration_images=len(images))
    for name, group in groups.items():
        counts = report.float_by_group if name not in chosen else report.quantized_by_group
        counts[group] = counts.get(group, 0) + 1
    report.quantized_nodes, report.float_nodes = len(chosen), len(groups) - len(chosen)
    if not chosen:
        raise QuantizationError("no Conv / MatMul / Gemm node left to quantise")

    if ranges is None:
        ranges = collect_ranges(model, _float_inputs_outputs(model, chosen), calibration_reader(images), plugin=plugin)
    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="faseg-int8-") as tmp:
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        quiet.setLevel(logging.ERROR)  # "Please consider to run pre-processing": our graph is already folded
        try:
            quantize_static(
                model,
                out,
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_quantize=sorted(chosen),
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache,
                extra_options={"OpTypesToExcludeOutputQuantization": list(FLOAT_OUTPUT_OPS)},
            )
        finally:
            quiet.setLevel(level)
        quantized = onnx.load_model(str(out))
    read_shapes_before_dequantize(quantized)
    quantized.ir_version = min(quantized.ir_version, proto.ir_version)
    del quantized.graph.value_info[:]  # the check step infers them again
    report.qdq_nodes = dict(
        Counter(n.op_type for n in quantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    )
    return quantized, report


__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_IMAGES",
    "FLOAT_GROUPS",
    "GROUPS",
    "QUANTIZED_OPS",
    "Calibration",
    "QuantizationError",
    "QuantizationReport",
    "calibrate",
    "calibration_dataset",
    "calibration_images",
    "calibration_reader",
    "collect_ranges",
    "fold_weight_identities",
    "node_group",
    "quantizable_nodes",
    "quantize_int8",
]
