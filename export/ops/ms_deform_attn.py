"""``ms_deform_attn`` for the plugin flavour: one ``faseg::FASegMSDeformAttn_TRT`` node per call.

Contract: ``docs/plugin_contract.md`` §1. The torch side is the custom op
``torch.ops.faseg_onnx.ms_deform_attn`` (:data:`OP_HANDLE`): it computes the reference
(:func:`faseg.model.ops.ms_deform_attn_reference`), so tracing sees real values and shapes, and its ONNX
symbolic (TorchScript exporter, registered for :data:`OP_HANDLE` at import) emits the contract node::

    value [N, S, M, D] ─┐
    spatial_shapes  [L, 2] int32 (constant)     ┐
    level_start_index [L] int32 (constant)      ├─ FASegMSDeformAttn_TRT ─ [N, Lq, M, D] ─ Reshape ─ [N, Lq, M·D]
    sampling_locations [N, Lq, M, L, P, 2] ─────┤        (domain faseg, plugin_version "1", plugin_namespace "")
    attention_weights [N, Lq, M, L, P] ─────────┘

:func:`ms_deform_attn__plugin` has the reference's signature; the exporter registers it through
:func:`faseg.model.ops.register_kernel` during a plugin-flavour capture only.

Backend limits:

- TensorRT: the plugin (a later issue) is looked up by (op_type, ``plugin_version``, ``plugin_namespace``);
  the domain is ignored. NVIDIA's built-in ``MultiscaleDeformableAttnPlugin_TRT`` has the same I/O.
  ``spatial_shapes`` / ``level_start_index`` must be INT32: torch's level tables are Python ints here (fixed
  H×W per file), so they are emitted as INT32 constants directly and no ``Cast`` is needed.
- ONNX Runtime: ``libfaseg_ort_ops.so`` (CPU, fp32/fp16). Its shape inference writes a dimension it cannot
  resolve as the literal ``-1`` (the ORT C++ ``ShapeInferContext`` wrapper does so), which breaks the shape
  inference of the nodes after it (``MatMul`` "Incompatible dimensions"). The Reshape after the node
  therefore takes its target shape from ``Shape(sampling_locations)[:2]`` and ``Shape(value)[2] · Shape(value)[3]``
  rather than from the node's output, so no ``-1`` leaks downstream. The Reshape is a no-op copy at run time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from faseg.export.custom_ops import DOMAIN, MS_DEFORM_ATTN_OP, PLUGIN_NAMESPACE, PLUGIN_VERSION
from faseg.model.ops import level_start_index, ms_deform_attn_reference
from torch import Tensor
from torch.onnx import symbolic_helper

from .symbolic import SYMBOLIC_OPSET, register_symbolic


@torch.library.custom_op("faseg_onnx::ms_deform_attn", mutates_args=())
def _ms_deform_attn(
    value: Tensor, spatial_shapes: list[int], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """value (N, S, M, D); spatial_shapes flattened [H_0, W_0, H_1, W_1, ...] -> (N, Lq, M·D)."""
    return ms_deform_attn_reference(value, _pairs(spatial_shapes), sampling_locations, attention_weights)


@_ms_deform_attn.register_fake
def _(value: Tensor, spatial_shapes: list[int], sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m * d)


OP_HANDLE = torch.ops.faseg_onnx.ms_deform_attn.default


def _pairs(flat: Sequence[int]) -> list[tuple[int, int]]:
    if len(flat) % 2:
        raise ValueError(f"spatial_shapes must hold (H, W) pairs, got {list(flat)}")
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def ms_deform_attn__plugin(
    value: Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same signature and result as :func:`faseg.model.ops.ms_deform_attn_reference`; exports as the
    contract node. The level sizes must be Python ints (static H×W export)."""
    flat = [int(v) for hw in spatial_shapes for v in hw]
    return OP_HANDLE(value, flat, sampling_locations, attention_weights)


def _shape_slice(g, value, start: int, end: int):
    """``Shape(value)[start:end]`` as an int64 1-D tensor."""

    def const(v: int):
        return g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))

    return g.op("Slice", g.op("Shape", value), const(start), const(end), const(0))


@symbolic_helper.parse_args("v", "is", "v", "v")
def ms_deform_attn_symbolic(g, value, spatial_shapes, sampling_locations, attention_weights):
    """TorchScript-exporter symbolic: the contract node, then the Reshape to the model's (N, Lq, M·D)."""
    shapes = _pairs(spatial_shapes)
    shapes_i32 = g.op("Constant", value_t=torch.tensor(shapes, dtype=torch.int32))
    starts_i32 = g.op("Constant", value_t=torch.tensor(level_start_index(shapes), dtype=torch.int32))
    out = g.op(
        f"{DOMAIN}::{MS_DEFORM_ATTN_OP}",
        value,
        shapes_i32,
        starts_i32,
        sampling_locations,
        attention_weights,
        plugin_version_s=PLUGIN_VERSION,
        plugin_namespace_s=PLUGIN_NAMESPACE,
    )
    out.setType(value.type())
    # Shape + Slice rather than Shape(start, end): the TorchScript exporter's own shape propagation ignores
    # Shape-15's start/end attributes and records a wrong output shape.
    lead = _shape_slice(g, sampling_locations, 0, 2)  # [N, Lq]
    heads_x_dim = g.op("Mul", _shape_slice(g, value, 2, 3), _shape_slice(g, value, 3, 4))  # [M·D]
    target = g.op("Concat", lead, heads_x_dim, axis_i=0)  # [N, Lq, M·D]
    return g.op("Reshape", out, target)  # (N, Lq, M·D)


register_symbolic(OP_HANDLE, ms_deform_attn_symbolic, SYMBOLIC_OPSET)
