"""Parameter and multiply-accumulate (MAC) counts for ``faseg info``.

Parameters
----------
:func:`count_parameters` counts the elements of every ``nn.Parameter`` of the module, trainable and frozen
(``requires_grad=False``) alike, each shared parameter once. Buffers are **not** counted: BatchNorm/FrozenBN
running statistics, ``num_batches_tracked``, fixed positional tables and the like. This is
``fvcore.nn.parameter_count(model)[""]`` (fvcore iterates ``named_parameters()``, which also de-duplicates
shared parameters; ``fvcore/nn/parameter_count.py``), the count behind the FASeg/Mask2Former model sizes,
where detectron2's ``FrozenBatchNorm2d`` keeps its statistics as buffers.

MACs
----
:func:`count_macs` runs the model once under ``torch.no_grad()`` and intercepts every ATen operator with a
``TorchDispatchMode``. One MAC is one multiply-accumulate. The rules follow the FLOP counter the FASeg and
Mask2Former authors used (``tools/analyze_model.py`` → ``detectron2.utils.analysis.FlopCountAnalysis``, a
subclass of ``fvcore.nn.FlopCountAnalysis``; fvcore counts "one fused multiply-add as one flop", so its
"FLOPs" are MACs). Sources read: ``fvcore/nn/flop_count.py`` (``_DEFAULT_SUPPORTED_OPS``) and
``fvcore/nn/jit_handles.py`` at facebookresearch/fvcore 3378afe0 (these rules are unchanged since the
2021-03 "flop counter for norm and resize ops" commit, i.e. older than Mask2Former);
``detectron2/utils/analysis.py`` (``_IGNORED_OPS``) at 02b5c4e2; ``tools/analyze_model.py`` of Mask2Former
at 9b0651c6.

Counted (bias additions are never counted):

- ``convolution`` (1-3d, grouped, depthwise): N · prod(weight.shape) · prod(output spatial); the weight is
  (C_out, C_in/groups, k…), so groups are accounted for. Transposed: N · prod(weight.shape) · prod(input
  spatial). (fvcore ``conv_flop_count``.)
- ``mm``, ``addmm``: m · k · n. ``F.linear``/``nn.Linear`` lower to these (fvcore ``linear``/``addmm``:
  prod(input) · out_features).
- ``bmm``, ``baddbmm``: b · m · k · n. ``torch.matmul`` of ≥3-d tensors and ``torch.einsum`` contractions
  lower to ``bmm`` (fvcore ``bmm``/``matmul``/``einsum``: the same product of all index sizes).
- ``addbmm``, ``mv``, ``addmv``, ``dot``, ``vdot``: b · m · k · n, m · n, m · n, n, n.
- fused scaled-dot-product attention (``_scaled_dot_product_*``): B · H · L · S · (E + E_v), i.e. the two
  matmuls Q·Kᵀ and P·V; the math fallback lowers to two ``bmm`` with the same count.
- ``_native_multi_head_attention``: in/out projections + the two attention matmuls, as the unfused path.
  Only a safety net: counting switches the MHA fast path off, so ``nn.MultiheadAttention`` runs — and is
  counted — op by op, as under fvcore's JIT trace.
- ``grid_sampler_2d``/``_3d``, ``cudnn_grid_sampler``: 4 per **output** element, whatever the mode (fvcore:
  ``"aten::grid_sampler": elementwise_flop_counter(0, 4)  # assume bilinear``).
- ``upsample_bilinear2d``: 4 per output element (fvcore ``elementwise_flop_counter(0, 4)``).
- ``upsample_nearest2d``: 1 per output element (fvcore ``elementwise_flop_counter(0, 1)``).
- ``_adaptive_avg_pool2d``: 1 per **input** element (fvcore ``elementwise_flop_counter(1, 0)``).
- ``native_layer_norm``, ``native_group_norm``: 5 per input element with an affine weight, 4 without
  (fvcore ``norm_flop_counter``; "5 is just a rough estimate").

Not counted (0 MACs), as in fvcore + detectron2:

- batch norm (``native_batch_norm``, ``_native_batch_norm_legit*``, …): detectron2 puts
  ``aten::batch_norm`` in ``_IGNORED_OPS`` (fvcore alone would count 1-2 per element in eval). Pass
  ``rules=FVCORE_BATCH_NORM_RULES`` to count it the fvcore way. A ``FrozenBatchNorm2d`` written as
  multiply + add is elementwise and uncounted either way.
- every elementwise or reduction op: add, sub, mul, div, exp, sqrt, sigmoid, relu/gelu, softmax, sum, mean,
  masked_fill, …; and data movement: view, permute, cat, gather, index, sort/topk, copy, padding, pooling
  other than adaptive average pooling.
- upsampling modes other than bilinear/nearest 2-d, and antialiased bilinear (fvcore has no handle).

Known differences from fvcore's trace-level counting [stated, not hidden]:

- ``adaptive_avg_pool2d`` to 1×1 lowers to ``mean`` in ATen and is therefore not counted (fvcore counts the
  input size).
- ``instance_norm`` lowers to batch norm in ATen and is therefore not counted (fvcore: 4-5 per element).
- an einsum without a summed index (outer/elementwise product) lowers to ``mul`` and counts 0 (fvcore counts
  half the output size via ``np.einsum_path``).
- ``torch.matmul`` with a broadcast left operand is counted on the broadcast shapes (fvcore multiplies the
  un-broadcast left shape by the last dim of the right one, which undercounts).
- operators of custom fused kernels (e.g. a registered CUDA ``ms_deform_attn``) have no rule and count 0, as
  under fvcore; count with the reference implementations (the default on CPU), which is what the
  Mask2Former authors did for MSDeformAttn (``grid_sample`` path, see the spec §5.1).

Extra rules can be supplied with ``count_macs(..., rules={"ns::op": fn})``, where ``fn(args, out) -> int``
receives the operator's arguments bound to their schema names (``args["input"]``…) and its output; a value of
``None`` removes a rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

MacRule = Callable[[dict[str, Any], Any], int]


# ----------------------------------------------------------------------------------------------------------
# parameters


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (trainable and frozen; buffers excluded; shared parameters once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------------
# MAC rules (args are bound to the ATen schema's argument names)


def _numel(t: Tensor) -> int:
    return math.prod(t.shape)


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _mm(a: dict[str, Any], out: Any) -> int:  # mm(self, mat2)
    m, k = a["self"].shape
    return m * k * a["mat2"].shape[-1]


def _addmm(a: dict[str, Any], out: Any) -> int:  # addmm(self, mat1, mat2)
    m, k = a["mat1"].shape
    return m * k * a["mat2"].shape[-1]


def _bmm(a: dict[str, Any], out: Any) -> int:  # bmm(self, mat2)
    b, m, k = a["self"].shape
    return b * m * k * a["mat2"].shape[-1]


def _baddbmm(a: dict[str, Any], out: Any) -> int:  # baddbmm/addbmm(self, batch1, batch2)
    b, m, k = a["batch1"].shape
    return b * m * k * a["batch2"].shape[-1]


def _mv(a: dict[str, Any], out: Any) -> int:  # mv(self, vec)
    return _numel(a["self"])


def _addmv(a: dict[str, Any], out: Any) -> int:  # addmv(self, mat, vec)
    return _numel(a["mat"])


def _dot(a: dict[str, Any], out: Any) -> int:  # dot(self, tensor)
    return _numel(a["self"])


def _conv(a: dict[str, Any], out: Any) -> int:  # convolution(input, weight, bias, ..., transposed, ...)
    x, w = a["input"], a["weight"]
    spatial = x.shape[2:] if a["transposed"] else _first(out).shape[2:]
    return x.shape[0] * _numel(w) * math.prod(spatial)


def _sdpa(a: dict[str, Any], out: Any) -> int:  # (query (B,H,L,E), key (B,H,S,E), value (B,H,S,Ev))
    q, k, v = a["query"], a["key"], a["value"]
    batch_heads = math.prod(q.shape[:-2])
    return batch_heads * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _native_mha(a: dict[str, Any], out: Any) -> int:  # query/key/value (B, L|S, E), weights (3E, E), (E, E)
    q, k = a["query"], a["key"]
    b, l_q, e = q.shape
    s = k.shape[1]
    projections = b * l_q * e * e + 2 * b * s * e * e + b * l_q * e * e  # q, k, v in; out
    return projections + 2 * b * l_q * s * e  # Q·Kᵀ and P·V over all heads


def _per_output(scale: int) -> MacRule:
    def rule(a: dict[str, Any], out: Any) -> int:
        return scale * _numel(_first(out))

    return rule


def _per_input(scale: int) -> MacRule:
    def rule(a: dict[str, Any], out: Any) -> int:
        return scale * _numel(a["self"])

    return rule


def _norm(a: dict[str, Any], out: Any) -> int:  # native_layer_norm / native_group_norm (input, weight)
    return _numel(a["input"]) * (5 if a.get("weight") is not None else 4)


def _batch_norm_fvcore(a: dict[str, Any], out: Any) -> int:
    """fvcore ``batchnorm_flop_jit``: training 5/4 per element (affine/not), eval 2/1."""
    training = bool(a.get("training", False))
    affine = a.get("weight") is not None
    per_element = (5 if affine else 4) if training else (2 if affine else 1)
    return _numel(a["input"]) * per_element


DEFAULT_RULES: dict[str, MacRule] = {
    "aten::convolution": _conv,
    "aten::_convolution": _conv,
    "aten::mm": _mm,
    "aten::addmm": _addmm,
    "aten::bmm": _bmm,
    "aten::baddbmm": _baddbmm,
    "aten::addbmm": _baddbmm,
    "aten::mv": _mv,
    "aten::addmv": _addmv,
    "aten::dot": _dot,
    "aten::vdot": _dot,
    "aten::_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "aten::_scaled_dot_product_flash_attention": _sdpa,
    "aten::_scaled_dot_product_efficient_attention": _sdpa,
    "aten::_scaled_dot_product_cudnn_attention": _sdpa,
    "aten::_scaled_dot_product_fused_attention_overrideable": _sdpa,
    "aten::_native_multi_head_attention": _native_mha,
    "aten::grid_sampler_2d": _per_output(4),
    "aten::grid_sampler_3d": _per_output(4),
    "aten::cudnn_grid_sampler": _per_output(4),
    "aten::upsample_bilinear2d": _per_output(4),
    "aten::upsample_nearest2d": _per_output(1),
    "aten::_adaptive_avg_pool2d": _per_input(1),
    "aten::native_layer_norm": _norm,
    "aten::native_group_norm": _norm,
}
"""Rules keyed by qualified ATen operator name (all overloads of the operator share the rule)."""

FVCORE_BATCH_NORM_RULES: dict[str, MacRule] = {
    name: _batch_norm_fvcore
    for name in (
        "aten::native_batch_norm",
        "aten::_native_batch_norm_legit",
        "aten::_native_batch_norm_legit_no_training",
        "aten::_native_batch_norm_legit_functional",
        "aten::cudnn_batch_norm",
        "aten::miopen_batch_norm",
    )
}
"""Opt-in: count batch norm as plain fvcore does (detectron2, and so the FASeg numbers, ignore it)."""


# ----------------------------------------------------------------------------------------------------------
# counting


@dataclass
class MacReport:
    """Result of :func:`count_macs`.

    ``total``: MACs of the whole forward. ``by_module``: "" (the whole model, = ``total``) and every module
    down to ``max_depth`` levels ("backbone", "pixel_decoder.transformer", …), in ``named_modules`` order,
    zero for modules that did not run; an operator counts towards every such module whose ``__call__`` is
    active when it runs. ``by_op``: MACs per qualified ATen operator name ("aten::convolution", …).
    """

    total: int = 0
    by_module: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, int] = field(default_factory=dict)

    def format(self, scale: float = 1e9, unit: str = "GMACs") -> str:
        """A two-column text table of ``by_module`` (children indented), then ``by_op``."""
        rows = [("model", self.total)]
        rows += [("  " * name.count(".") + "  " + name, n) for name, n in self.by_module.items() if name]
        rows.append(("operators", self.total))
        rows += [("  " + name, n) for name, n in sorted(self.by_op.items(), key=lambda kv: -kv[1])]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {n / scale:10.3f} {unit}" for name, n in rows)


def _bind(func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    schema_args = func._schema.arguments
    bound = {a.name: v for a, v in zip(schema_args, args)}
    bound.update(kwargs)
    for a in schema_args:
        if a.name not in bound and a.has_default_value():
            bound[a.name] = a.default_value
    return bound


class _MacCounterMode(TorchDispatchMode):
    def __init__(self, rules: Mapping[str, MacRule], stack: list[str], report: MacReport):
        super().__init__()
        self.rules = rules
        self.stack = stack
        self.report = report

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name
        rule = self.rules.get(name)
        if rule is not None:
            macs = int(rule(_bind(func, args, kwargs), out))
            if macs:
                report = self.report
                report.total += macs
                report.by_op[name] = report.by_op.get(name, 0) + macs
                # Every active module, plus every name-prefix of the innermost one: containers that are never
                # called themselves (nn.ModuleList) still sum their children. Each name counts once.
                names = set(self.stack)
                if self.stack:
                    parts = self.stack[-1].split(".")
                    names.update(".".join(parts[:i]) for i in range(len(parts) + 1))
                for module_name in names:
                    if module_name in report.by_module:
                        report.by_module[module_name] += macs
        return out


def count_macs(
    model: nn.Module,
    inputs: Any,
    *,
    max_depth: int = 2,
    rules: Mapping[str, MacRule | None] | None = None,
) -> MacReport:
    """Run ``model`` once on ``inputs`` under ``torch.no_grad()`` and count MACs (rules: module docstring).

    ``inputs``: a tuple is unpacked into positional arguments; anything else (a tensor, a list, a dict) is
    passed as the single argument. The train/eval mode is left as it is (call ``model.eval()`` first for
    inference numbers). The ``nn.MultiheadAttention`` fast path is switched off for the run and restored.
    Counts depend on shapes only, so ``model.to("meta")`` with meta-device inputs gives the same numbers
    without computing anything.
    """
    table: dict[str, MacRule] = dict(DEFAULT_RULES)
    for name, rule in (rules or {}).items():
        if rule is None:
            table.pop(name, None)
        else:
            table[name] = rule
    args = inputs if isinstance(inputs, tuple) else (inputs,)

    modules = list(model.named_modules())
    report = MacReport(by_module={name: 0 for name, _ in modules if _depth(name) <= max_depth})
    stack: list[str] = []
    names = {id(module): name for name, module in modules}

    def push(module: nn.Module, _args: Any) -> None:
        stack.append(names[id(module)])

    def pop(module: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()

    handles = []
    for _, module in modules:
        handles.append(module.register_forward_pre_hook(push))
        handles.append(module.register_forward_hook(pop, always_call=True))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), _MacCounterMode(table, stack, report):
            model(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()
    return report


def _depth(name: str) -> int:
    return 0 if name == "" else name.count(".") + 1


__all__ = [
    "DEFAULT_RULES",
    "FVCORE_BATCH_NORM_RULES",
    "MacReport",
    "MacRule",
    "count_macs",
    "count_parameters",
]
