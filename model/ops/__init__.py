"""The two attention ops of FASeg and their single dispatch point.

``ms_deform_attn`` (pixel-decoder encoder) and ``topk_cross_attention`` (HRCA) each have a pure-PyTorch
reference. A fused implementation (CUDA kernel, custom op used for export) is registered per device type with
:func:`register_kernel`; the model always calls the two functions below, never an implementation directly.
FASeg's own CUDA kernels live beside them (``cuda_library``: the loader of the C-ABI library; ``cuda_ops``: the
``torch.library`` ops; ``kernels.select_kernels``: the ``--kernels auto|on|off`` choice), imported on demand.
"""

from __future__ import annotations

from .attention import MultiheadAttention, multi_head_attention
from .dispatch import OP_NAMES, ms_deform_attn, register_kernel, registered_kernel, topk_cross_attention
from .hrca import hr_window_size, hrca_select, topk_cross_attention_reference, topk_indices
from .ms_deform_attn import level_start_index, ms_deform_attn_reference

__all__ = [
    "OP_NAMES",
    "MultiheadAttention",
    "hr_window_size",
    "hrca_select",
    "level_start_index",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "multi_head_attention",
    "register_kernel",
    "registered_kernel",
    "topk_cross_attention",
    "topk_cross_attention_reference",
    "topk_indices",
]
