"""Export-time implementations of FASeg's two attention ops, one file per op.

The model calls :func:`faseg.model.ops.ms_deform_attn` and :func:`faseg.model.ops.topk_cross_attention`,
the single dispatch point. During a capture the exporter swaps in the functions of one flavour with
:func:`use_kernels` and restores whatever was registered before, in a ``finally``:

============  ==================================  ==========================================
flavour       ``ms_deform_attn``                  ``topk_cross_attention``
============  ==================================  ==========================================
portable      the reference (``GridSample``)      :func:`topk_cross_attention__portable`
plugin        :func:`ms_deform_attn__plugin`      :func:`topk_cross_attention__plugin`
============  ==================================  ==========================================

The plugin functions call torch custom ops (``torch.ops.faseg_onnx.*``) whose TorchScript-exporter symbolics
emit the ``faseg`` domain nodes of ``docs/plugin_contract.md``; the symbolics are registered by op handle
when the op modules are imported (:mod:`.symbolic`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from faseg.model.ops import register_kernel, registered_kernel

from .ms_deform_attn import ms_deform_attn__plugin
from .symbolic import SYMBOLIC_OPSET, register_symbolic
from .topk_cross_attention import topk_cross_attention__plugin, topk_cross_attention__portable

FLAVOURS = ("portable", "plugin")


def flavour_kernels(flavour: str) -> dict[str, Callable[..., torch.Tensor] | None]:
    """The replacement per op name for ``flavour``; ``None`` means the reference."""
    if flavour == "portable":
        return {"ms_deform_attn": None, "topk_cross_attention": topk_cross_attention__portable}
    if flavour == "plugin":
        return {"ms_deform_attn": ms_deform_attn__plugin, "topk_cross_attention": topk_cross_attention__plugin}
    raise ValueError(f"unknown flavour {flavour!r}; expected one of {', '.join(FLAVOURS)}")


@contextlib.contextmanager
def use_kernels(kernels: Mapping[str, Callable[..., torch.Tensor] | None], device_type: str = "cpu") -> Iterator[None]:
    """Register ``kernels`` (op name -> function, None = reference) for ``device_type``; restore on exit."""
    previous = {op: registered_kernel(op, device_type) for op in kernels}
    try:
        for op, fn in kernels.items():
            register_kernel(op, device_type, fn)
        yield
    finally:
        for op, fn in previous.items():
            register_kernel(op, device_type, fn)


__all__ = [
    "FLAVOURS",
    "SYMBOLIC_OPSET",
    "flavour_kernels",
    "ms_deform_attn__plugin",
    "register_symbolic",
    "topk_cross_attention__plugin",
    "topk_cross_attention__portable",
    "use_kernels",
]
