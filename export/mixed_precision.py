"""fp32 ONNX graph -> mixed fp16/fp32 graph by explicit Cast insertion (``faseg export onnx --precision fp16``).

TensorRT 10+/11 networks are strongly typed: an fp16 engine needs an ONNX graph whose tensors already carry
fp16 types, with the precision-sensitive regions left in fp32 behind Cast nodes (TensorRT's
strongly typed mode keeps every tensor in the type the ONNX graph gives it).
This pass produces that graph from our fp32 export.

Why our own pass: onnxconverter-common 1.16 (``float16.convert_float_to_float16``) retypes the outputs of
``Cast(to=FLOAT)`` nodes to fp16 without changing their ``to`` attribute, so ONNX Runtime rejects the result of
our graph ("Type (tensor(float16)) of output arg (/head/Cast_output_0) ... does not match expected type"), and
it clamps every constant to ±1e4. NVIDIA ModelOpt AutoCast, the other established tool, pins onnx 1.21 and
onnxruntime-gpu / cupy, which conflict with this package's pins.

The rules, applied to a shape-inferred fp32 graph:

1. *Data tensors* are those computed from the graph inputs other than through ``Shape`` / ``Size``: shape
   arithmetic and constant subgraphs (positional encodings, grid coordinates) stay fp32 and are cast once where
   they meet fp16 data.
2. A node computes in fp16 when ``keep_fp32(node)`` is false and it writes a float data tensor. Its inputs
   and outputs that share the schema's type variable with its first output become fp16 (so a ``Resize``'s
   ``scales`` or a ``Reshape``'s shape keep their types); a ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)``.
3. Every other node keeps its fp32 types; a Cast to fp32 is inserted where it reads an fp16 tensor (``Shape``,
   ``Size`` and ``Cast`` read any type and get none). Outputs that are not float (comparisons, ``ArgMax``)
   therefore decide on fp32 values.
4. Initializers and ``Constant`` values read by fp16 nodes get an fp16 copy (finite values clipped to ±65504;
   infinities, used as attention masks, stay infinite). Graph inputs and outputs keep their types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FP16_MAX = float(np.finfo(np.float16).max)
#: Nodes that read a tensor of any type without computing on its values.
TYPE_AGNOSTIC = frozenset({"Shape", "Size", "Cast"})
#: Nodes whose outputs carry no values of their input data.
SHAPE_OPS = frozenset({"Shape", "Size"})


class MixedPrecisionError(ValueError):
    """The graph cannot be converted (a node without a known schema would have to run in fp16, ...)."""


@dataclass
class ConversionReport:
    fp16_nodes: int = 0
    fp32_nodes: int = 0
    casts_inserted: int = 0
    fp16_initializers: int = 0
    kept_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def kept_fp32(self) -> int:
        """Nodes that would compute in fp16 but ``keep_fp32`` held in fp32."""
        return sum(self.kept_by_rule.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp16_nodes": self.fp16_nodes,
            "fp32_nodes": self.fp32_nodes,
            "kept_fp32": self.kept_fp32,
            "casts_inserted": self.casts_inserted,
            "fp16_initializers": self.fp16_initializers,
            "kept_by_rule": dict(self.kept_by_rule),
        }


def _elem_types(model: Any) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _data_tensors(model: Any) -> set[str]:
    """Tensors whose values depend on the graph inputs (the graph is topologically sorted)."""
    data = {i.name for i in model.graph.input}
    for node in model.graph.node:
        if node.op_type not in SHAPE_OPS and any(name in data for name in node.input if name):
            data.update(node.output)
    return data


def _same_type_slots(node: Any, opset: dict[str, int]) -> tuple[set[int], set[int]]:
    """(input indices, output indices) typed by the same type variable as output 0, from the op schema."""
    import onnx

    try:
        schema = onnx.defs.get_schema(node.op_type, opset.get(node.domain, 1), node.domain)
    except onnx.defs.SchemaError as exc:
        raise MixedPrecisionError(
            f"node {node.name!r} ({node.domain or 'ai.onnx'}::{node.op_type}) has no ONNX schema, so it cannot be "
            "converted to fp16; keep it in fp32"
        ) from exc
    out_type = schema.outputs[0].type_str
    if out_type.startswith("tensor("):
        return set(), {0} if out_type == "tensor(float)" else set()

    def slots(formals: list[Any], count: int) -> set[int]:
        found = set()
        for i in range(count):
            formal = formals[min(i, len(formals) - 1)]  # the last formal may be variadic
            if formal.type_str == out_type:
                found.add(i)
        return found

    return slots(schema.inputs, len(node.input)), slots(schema.outputs, len(node.output))


def _fp16_array(array: np.ndarray) -> np.ndarray:
    finite = np.isfinite(array)
    clipped = np.where(finite, np.clip(array, -FP16_MAX, FP16_MAX), array)
    return clipped.astype(np.float16)


def convert_to_mixed_precision(
    model: Any, keep_fp32: Callable[[Any], str | None] = lambda node: None
) -> tuple[Any, ConversionReport]:
    """Return a new fp16/fp32 ModelProto and what was converted.

    ``keep_fp32(node)`` returns a short rule name when ``node`` must stay fp32 (counted in the report), else
    None. The input model must be fp32 and topologically sorted (as exported).
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    converter = _Converter(model, keep_fp32)
    for node in model.graph.node:
        converter.convert(node)
    converter.keep_outputs_fp32()
    converter.write_back()
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
    return model, converter.report


class _Converter:
    """The state of one conversion: node by node (graph order), then graph outputs, then the write-back."""

    def __init__(self, model: Any, keep_fp32: Callable[[Any], str | None]) -> None:
        from onnx import TensorProto

        self.FLOAT, self.FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
        self.model = model
        graph = model.graph
        self.types = _elem_types(model)
        if any(t == self.FLOAT16 for t in self.types.values()):
            raise MixedPrecisionError("the graph already holds fp16 tensors; convert the fp32 export")
        self.keep_fp32 = keep_fp32
        self.data = _data_tensors(model)
        self.opset = {o.domain: o.version for o in model.opset_import}
        self.opset.setdefault("ai.onnx", self.opset.get("", 1))
        self.initializers = {t.name: t for t in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
        self.graph_outputs = {o.name for o in graph.output}
        self.report = ConversionReport()
        self.fp16_tensors: set[str] = set()
        self.new_nodes: list[Any] = []
        self.new_initializers: list[Any] = []
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, target type) -> cast output (one per tensor, type)

    def cast(self, name: str, to: int) -> str:
        from onnx import helper

        key = (name, to)
        if key not in self.casts:
            out = f"{name}__to_{'fp16' if to == self.FLOAT16 else 'fp32'}"
            self.new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            self.casts[key] = out
            self.report.casts_inserted += 1
        return self.casts[key]

    def fp16_constant(self, name: str) -> str | None:
        """An fp16 initializer copy of an fp32 initializer / Constant value, or None when it is neither."""
        from onnx import numpy_helper

        key = (name, -self.FLOAT16)
        if key in self.casts:
            return self.casts[key]
        if name in self.initializers and self.initializers[name].data_type == self.FLOAT:
            array = numpy_helper.to_array(self.initializers[name])
        elif name in self.constants and self.constants[name].attribute[0].name == "value":
            tensor = self.constants[name].attribute[0].t
            if tensor.data_type != self.FLOAT:
                return None
            array = numpy_helper.to_array(tensor)
        else:
            return None
        out = f"{name}__fp16"
        self.new_initializers.append(numpy_helper.from_array(_fp16_array(array), out))
        self.report.fp16_initializers += 1
        self.casts[key] = out
        return out

    def convert(self, node: Any) -> None:
        """Run ``node`` in fp16 (inputs cast or copied to fp16) unless a rule keeps it fp32 (fp16 inputs cast
        back to fp32); nodes with no float data output stay as they are."""
        import onnx

        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise MixedPrecisionError(f"node {node.name!r} ({node.op_type}) holds a subgraph; not supported")
        types, FLOAT = self.types, self.FLOAT
        untyped = [o for o in node.output if o and o in self.data and o not in types]
        if untyped:
            raise MixedPrecisionError(
                f"shape inference gives no type for {untyped[0]!r}, written by {node.name!r} "
                f"({node.domain or 'ai.onnx'}::{node.op_type}); give the node's outputs value_info"
            )
        float_data_out = any(types.get(o) == FLOAT and o in self.data for o in node.output if o)
        rule = self.keep_fp32(node) if float_data_out else None
        if float_data_out and rule is not None:
            self.report.kept_by_rule[rule] = self.report.kept_by_rule.get(rule, 0) + 1
        if float_data_out and rule is None:
            self.report.fp16_nodes += 1
            if node.op_type == "Cast":
                for attr in node.attribute:
                    if attr.name == "to" and attr.i == FLOAT:
                        attr.i = self.FLOAT16
                self.fp16_tensors.update(o for o in node.output if types.get(o) == FLOAT)
                self.new_nodes.append(node)
                return
            in_slots, out_slots = _same_type_slots(node, self.opset)
            for i, name in enumerate(node.input):
                if i not in in_slots or not name or types.get(name) != FLOAT or name in self.fp16_tensors:
                    continue
                node.input[i] = self.fp16_constant(name) or self.cast(name, self.FLOAT16)
            self.fp16_tensors.update(node.output[i] for i in out_slots if i < len(node.output) and node.output[i])
        else:
            self.report.fp32_nodes += 1
            if node.op_type not in TYPE_AGNOSTIC:
                for i, name in enumerate(node.input):
                    if name in self.fp16_tensors:
                        node.input[i] = self.cast(name, FLOAT)
        self.new_nodes.append(node)

    def keep_outputs_fp32(self) -> None:
        """Graph outputs keep their fp32 type: the producer writes an fp16 tensor, a Cast writes the output."""
        from onnx import helper

        renames = {name: f"{name}__fp16" for name in self.graph_outputs if name in self.fp16_tensors}
        for node in self.new_nodes:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
            for i, name in enumerate(node.output):
                if name in renames:
                    node.output[i] = renames[name]
        for name, internal in renames.items():
            self.new_nodes.append(
                helper.make_node("Cast", [internal], [name], to=self.FLOAT, name=f"{name}__output_cast")
            )
            self.report.casts_inserted += 1

    def write_back(self) -> None:
        """Replace the graph's nodes and initializers, dropping Constants and initializers now unused."""
        graph = self.model.graph
        used = {name for node in self.new_nodes for name in node.input} | self.graph_outputs
        nodes = [n for n in self.new_nodes if n.op_type != "Constant" or n.output[0] in used]  # replaced by copies
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [t for t in graph.initializer if t.name in used] + self.new_initializers
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.value_info[:]


__all__ = ["ConversionReport", "MixedPrecisionError", "convert_to_mixed_precision"]
