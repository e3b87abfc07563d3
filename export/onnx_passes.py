"""Graph passes of an ONNX export, after capture: optional slimming, the serving-head rewrite, fp16 mixed
precision, and the contract check (onnx.checker, shape inference, I/O names and types, custom nodes)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from faseg.export import custom_ops
from faseg.export.contract import BATCH_DIM, INPUT_NAME, PRED_LOGITS, PRED_MASKS
from faseg.export.contract import CONFIDENCE_NAME as CONFIDENCE
from faseg.export.contract import LABELS_NAME as LABELS
from faseg.export.onnx_options import MAX_IR_VERSION, ExportError, ExportState, ExportStep
from faseg.export.quantize import QuantizationError, calibration_images, quantize_int8


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


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _NodeWriter:
    """The nodes a graph rewrite emits, in order: fresh ``faseg_opt/...`` names, shared int64 constants."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.nodes: list[Any] = []
        self._constants: dict[tuple[int, ...], str] = {}
        self._flat: dict[str, str] = {}  # tensor -> its (N, X, H·W) reshape, shared by every reader
        self._names = 0

    def fresh(self, tag: str) -> str:
        self._names += 1
        return f"faseg_opt/{tag}_{self._names}"

    def add(
        self, op: str, inputs: list[str], tag: str = "", outputs: list[str] | None = None, name: str = "", **attrs: Any
    ) -> str:
        """Append one node (outputs default to one fresh name); returns its first output."""
        from onnx import helper

        if not outputs:  # one fresh output, which also names the node
            outputs = [self.fresh(tag)]
            name = name or outputs[0]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or self.fresh(tag), **attrs))
        return outputs[0]

    def const(self, values: list[int]) -> str:
        from onnx import TensorProto, helper

        key = tuple(values)
        if key not in self._constants:
            name = f"faseg_opt/const_{len(self._constants)}"
            self.graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
            self._constants[key] = name
        return self._constants[key]

    def shape_slice(self, tensor: str, start: int, end: int) -> str:
        shape = self.add("Shape", [tensor], "shape")
        return self.add("Slice", [shape, self.const([start]), self.const([end]), self.const([0])], "slice")

    def flat_hw(self, tensor: str) -> str:
        """(N, X, H, W) -> (N, X, H·W)."""
        if tensor not in self._flat:
            self._flat[tensor] = self.add("Reshape", [tensor, self.const([0, 0, -1])], "flat")
        return self._flat[tensor]


class OptimizeHead(ExportStep):
    """Rewrite the two costliest standard-op patterns of the serving head; numerically the same graph.

    - ``Einsum`` ``bqc,bchw->bqhw`` (mask logits, once per prediction) and ``bqc,bqhw->bchw`` (the semantic
      scores, [N, K, H, W] at full resolution) become ``Reshape`` → ``MatMul`` → ``Reshape`` (plus a
      ``Transpose`` of the small class-probability operand). ONNX Runtime's CPU Einsum is ~1.5× slower than
      its MatMul on the 512² head, and TensorRT fuses MatMul better (mmdeploy#1728 did the same rewrite).
    - ``ReduceMax`` + ``ArgMax`` over the class axis of the same tensor (``semseg.max(dim=1)``) become one
      ``TopK(k=1)`` and two ``Squeeze``: one pass over [N, K, H, W] instead of two. ``TopK`` keeps the lower
      index on ties, as ``ArgMax`` (``select_last_index=0``) does.
    - When those two read nothing but the semantic-score einsum, the scores are computed class-last instead:
      ``Transpose`` (masks to [N, H·W, Q]) → ``MatMul`` with the [N, Q, K] class probabilities → ``TopK(k=1)``
      over the last, contiguous axis → ``Reshape`` to [N, H, W]. Same products and sums, so the same values;
      ONNX Runtime folds the Transpose into its MatMul, and its TopK over a strided class axis was the single
      costliest node of the R50 512² graph (220 of 2200 ms; class-last: 230 instead of 380 ms for product and
      selection together, ``benchmarks/results/2026-12-03_ort_profile_r50.json``).
    - In the plugin flavour, when those masks are ``Sigmoid(Resize(logits))`` read by nothing else, the upsampling
      runs channels-last: ``Transpose`` of the 1/4-resolution logits to [N, h, w, Q] → the same ``Resize`` over
      the H and W axes → ``Sigmoid`` → ``Reshape`` to [N, H·W, Q], which the MatMul reads as it is. Bilinear
      resizing treats each channel alone, so the values are the same; the full-resolution [N, Q, H, W] masks are
      never transposed (ONNX Runtime, R50 512² head: 220 → 115 ms for resize, sigmoid, product and selection).
      Only the plugin flavour, which ONNX Runtime and TensorRT run: the portable file is also read by other
      runtimes, and OpenVINO 2026.4 resizes channels-last 2.6× slower than channels-first (226 vs 86 ms for the
      same R50 masks), which would cost it more than ONNX Runtime gains.

    The replacement nodes write the original output names, so nothing downstream changes.
    """

    name = "optimize"

    def run(self, state: ExportState) -> dict[str, Any]:
        graph = state.proto.graph
        nodes = list(graph.node)
        out = _NodeWriter(graph)
        counter: Counter = Counter()
        pairs = self._max_argmax_pairs(nodes)
        skip = {id(n) for pair in pairs.values() for n in pair}
        readers = Counter(name for node in nodes for name in node.input)
        producers = {name: node for node in nodes for name in node.output}
        outputs = {o.name for o in graph.output}
        dropped: set[int] = set()  # nodes replaced by a rewrite further down the graph
        for node in nodes:
            equation = self._equation(node)
            scores = node.output[0] if node.output else None
            if equation == "bqc,bqhw->bchw" and scores in pairs and readers[scores] == 2 and scores not in outputs:
                upsampled = None
                if state.options.flavour == "plugin":
                    upsampled = self._sigmoid_of_resize(node.input[1], producers, readers, outputs)
                if upsampled is not None:
                    dropped |= {id(n) for n in upsampled}
                    counter["masks_resized_channels_last"] += 1
                self._class_last_labels(out, node, pairs.pop(scores), upsampled)
                counter.update(("einsum_to_matmul", "max_argmax_to_topk", "scores_class_last"))
            elif equation in ("bqc,bchw->bqhw", "bqc,bqhw->bchw"):
                self._einsum_as_matmul(out, node, equation)
                counter["einsum_to_matmul"] += 1
            elif id(node) in skip:
                # the ReduceMax of a pair not rewritten with its einsum (class-last) carries the pair
                if node.op_type == "ReduceMax" and node.input[0] in pairs and node is pairs[node.input[0]][0]:
                    self._max_argmax_as_topk(out, *pairs[node.input[0]])
                    counter["max_argmax_to_topk"] += 1
            else:
                out.nodes.append(node)
        del graph.node[:]
        graph.node.extend(n for n in out.nodes if id(n) not in dropped)
        return dict(counter)

    @staticmethod
    def _class_last_labels(out: _NodeWriter, einsum: Any, pair: tuple[Any, Any], upsampled: tuple[Any, Any] | None):
        """Scores (N, H·W, K) = masks (N, H·W, Q) @ classes (N, Q, K), then TopK(k=1) over K into the pair's
        outputs; the masks resized channels-last when ``upsampled`` = their (Resize, Sigmoid)."""
        classes, masks = einsum.input
        reduce_max, arg_max = pair
        if upsampled is not None:
            resize, _ = upsampled
            sizes = [
                out.add("Gather", [size, out.const([0, 2, 3, 1])], "gather") if size else ""
                for size in resize.input[2:]
            ]
            logits_last = out.add("Transpose", [resize.input[0]], "transpose", perm=[0, 2, 3, 1])  # (N, h, w, Q)
            resized = out.add("Resize", [logits_last, "", *sizes], "resize", **_attributes(resize))
            masks_hwq = out.add("Sigmoid", [resized], "sigmoid")  # (N, H, W, Q)
            flat_shape = out.add(
                "Concat",
                [out.shape_slice(masks_hwq, 0, 1), out.const([-1]), out.shape_slice(masks_hwq, 3, 4)],
                "flat_shape",
                axis=0,
            )
            masks_last = out.add("Reshape", [masks_hwq, flat_shape], "flat")
            label_shape = out.shape_slice(masks_hwq, 0, 3)
        else:
            masks_last = out.add("Transpose", [out.flat_hw(masks)], "transpose", perm=[0, 2, 1])
            label_shape = out.add(
                "Concat", [out.shape_slice(masks, 0, 1), out.shape_slice(masks, 2, 4)], "target", axis=0
            )
        product = out.add("MatMul", [masks_last, classes], "matmul")  # (N, H·W, K)
        values, indices = out.fresh("topk_values"), out.fresh("topk_indices")
        out.add("TopK", [product, out.const([1])], "topk", outputs=[values, indices], axis=2)
        out.add("Reshape", [values, label_shape], outputs=list(reduce_max.output), name=reduce_max.name)
        out.add("Reshape", [indices, label_shape], outputs=list(arg_max.output), name=arg_max.name)

    @staticmethod
    def _einsum_as_matmul(out: _NodeWriter, einsum: Any, equation: str) -> None:
        """``bqc,bchw->bqhw`` / ``bqc,bqhw->bchw`` as Reshape → MatMul → Reshape to the einsum's output."""
        a, b = einsum.input
        left = a
        if equation == "bqc,bqhw->bchw":  # (N, Q, K)ᵀ @ (N, Q, H·W)
            left = out.add("Transpose", [a], "transpose", perm=[0, 2, 1])
        product = out.add("MatMul", [left, out.flat_hw(b)], "matmul")
        lead = out.shape_slice(left, 0, 2)  # [N, Q] or [N, K]
        target = out.add("Concat", [lead, out.shape_slice(b, 2, 4)], "target", axis=0)
        out.add("Reshape", [product, target], outputs=list(einsum.output), name=einsum.name)

    @staticmethod
    def _max_argmax_as_topk(out: _NodeWriter, reduce_max: Any, arg_max: Any) -> None:
        """``ReduceMax`` + ``ArgMax`` over axis 1 as one ``TopK(k=1)`` and two ``Squeeze``."""
        values, indices = out.fresh("topk_values"), out.fresh("topk_indices")
        out.add("TopK", [reduce_max.input[0], out.const([1])], "topk", outputs=[values, indices], axis=1)
        out.add("Squeeze", [values, out.const([1])], outputs=list(reduce_max.output), name=reduce_max.name)
        out.add("Squeeze", [indices, out.const([1])], outputs=list(arg_max.output), name=arg_max.name)

    @staticmethod
    def _sigmoid_of_resize(
        masks: str, producers: dict[str, Any], readers: Counter, outputs: set[str]
    ) -> tuple[Any, Any] | None:
        """(Resize, Sigmoid) when ``masks`` (the einsum's 4-D operand) = Sigmoid(Resize(x)) and neither result
        is read elsewhere; a crop-and-resize (a region of interest) is left alone."""
        sigmoid = producers.get(masks)
        if sigmoid is None or sigmoid.op_type != "Sigmoid" or readers[masks] != 1 or masks in outputs:
            return None
        resize = producers.get(sigmoid.input[0])
        resized = sigmoid.input[0]
        if resize is None or resize.op_type != "Resize" or readers[resized] != 1 or resized in outputs:
            return None
        if len(resize.input) < 3 or resize.input[1] or resize.domain not in ("", "ai.onnx"):
            return None
        return resize, sigmoid

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

        reduce_max, arg_max = {}, {}
        for node in nodes:
            a = _attributes(node)
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

    Held in fp32 (the usual fp16 hazards: input statistics, softmax, sampling coordinates): the backbone's
    input stem (its first convolution: with it in fp16 the demo model's median mask-logit error was 0.095 and
    99.1% of labels agreed; with it in fp32, 0.008 and 99.8%, for 3 of 837 fp16 nodes); the deformable-attention core
    of every pixel-decoder layer (sampling locations, attention-weight softmax, bilinear sampling and the weighted sum;
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
