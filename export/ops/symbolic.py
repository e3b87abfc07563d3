"""What the op modules share: the opset their TorchScript-exporter symbolics start at, and their registration.

Its own module so that :mod:`faseg.export.ops` can import the op modules at its top while they import this
one (the package's ``__init__`` imports its modules, never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: The opset from which the symbolics apply (the exporter's opset is ≥ this).
SYMBOLIC_OPSET = 17


def register_symbolic(op_handle: torch._ops.OpOverload, fn: Callable, opset: int) -> None:
    """Register a TorchScript-exporter symbolic for a torch custom op, keyed by its handle."""
    torch.onnx.register_custom_op_symbolic(op_handle._schema.name, fn, opset)
