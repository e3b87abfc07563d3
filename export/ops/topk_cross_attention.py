"""``topk_cross_attention`` (HRCA) for export, both flavours.

- **portable** (:func:`topk_cross_attention__portable`): standard ONNX ops only. The reference ranks with
  ``torch.sort(stable=True)``, which the TorchScript exporter cannot export ("Sort, Out parameter is not
  supported") and which would become ``TopK(K = S0)`` anyway. This version takes ``torch.topk(k)``:
  ONNX ``TopK`` keeps the lower index first on ties, the reference's (and the contract's) tie rule, and the
  attention does not depend on the order of the selected keys. TensorRT limits ``TopK`` to K ≤ 3840; here
  K = S0 // divisor (8 at 512², 64 at 1024×2048) in ``window`` mode and K = k·window² in ``bilinear`` mode.
- **plugin** (:func:`topk_cross_attention__plugin`): one ``faseg::FASegTopKCrossAttn_TRT`` node
  (``docs/plugin_contract.md`` §2) from the custom op ``torch.ops.faseg_onnx.topk_cross_attention``
  (:data:`OP_HANDLE`), whose eager kernel is the reference. Attributes: ``num_heads``, ``divisor``, ``mode``
  (0 window, 1 bilinear) and the static ``level0_h`` / ``level0_w`` (H×W is fixed per file). A missing
  ``in_proj_bias`` / ``out_proj_bias`` is fed as zeros (all eight inputs are required by the contract).

Both have the signature of :func:`faseg.model.ops.topk_cross_attention_reference`; the exporter registers
one of them through :func:`faseg.model.ops.register_kernel` for the duration of a capture.

Backend limits (plugin): the TensorRT plugin is a later issue; the ONNX Runtime op is CPU-only and fp32-only.
ORT's custom-op shape inference writes unresolved dimensions as ``-1`` (see ``ms_deform_attn.py``), so the
node's output goes through ``Reshape(out, Shape(query))`` — a no-op at run time — before the rest of the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from faseg.export.custom_ops import (
    DOMAIN,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    TOPK_CROSS_ATTN_OP,
    TOPK_MODES,
)
from faseg.model.ops import hr_window_size, multi_head_attention, topk_cross_attention_reference
from torch import Tensor
from torch.onnx import symbolic_helper

from .symbolic import SYMBOLIC_OPSET, register_symbolic

# ---------------------------------------------------------------------------------------------------
# portable flavour
# ---------------------------------------------------------------------------------------------------


def topk_cross_attention__portable(
    query: Tensor,
    feat: Tensor,
    pos: Tensor,
    coarse_attn: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    level0_hw: tuple[int, int],
    mode: str = "window",
    divisor: int = 32,
) -> Tensor:
    """The reference with ``topk`` instead of a full stable sort. Shapes: query (B, Q, C); feat, pos
    (B, C, H3, W3); coarse_attn (B, Q, S0). Returns (B, Q, C)."""
    h0, w0 = level0_hw
    b, c, h3, w3 = feat.shape
    window = hr_window_size(level0_hw, (h3, w3))
    k = (h0 * w0) // divisor
    if k < 1:
        raise ValueError(f"HRCA selects S0 // divisor = {h0 * w0} // {divisor} = 0 windows; the input is too small")
    score = coarse_attn.sum(dim=1)  # (B, S0)
    if mode == "window":
        idx = torch.topk(score, k, dim=-1).indices  # (B, k)
        gather = idx[:, :, None].expand(b, k, window * window * c)

        def windows(x: Tensor) -> Tensor:
            x = x.reshape(b, c, h0, window, w0, window).permute(0, 2, 4, 3, 5, 1)  # (B, H0, W0, ws, ws, C)
            return x.reshape(b, h0 * w0, window * window * c)  # (B, S0, ws²·C)

        memory = torch.gather(windows(feat), 1, gather).reshape(b, k * window * window, c)  # (B, k·ws², C)
        memory_pos = torch.gather(windows(pos), 1, gather).reshape(b, k * window * window, c)
    elif mode == "bilinear":
        up = F.interpolate(score.view(b, 1, h0, w0), size=(h3, w3), mode="bilinear", align_corners=False)
        n = k * window * window
        idx = torch.topk(up.flatten(1), n, dim=-1).indices  # (B, N)
        gather = idx[:, :, None].expand(b, n, c)
        memory = torch.gather(feat.flatten(2).transpose(1, 2), 1, gather)  # (B, N, C)
        memory_pos = torch.gather(pos.flatten(2).transpose(1, 2), 1, gather)
    else:
        raise ValueError(f"unknown HRCA mode {mode!r}; expected one of {sorted(TOPK_MODES)}")
    out, _ = multi_head_attention(
        query, memory + memory_pos, memory, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads
    )
    return out


# ---------------------------------------------------------------------------------------------------
# plugin flavour
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("faseg_onnx::topk_cross_attention", mutates_args=())
def _topk_cross_attention(
    query: Tensor,
    feat: Tensor,
    pos: Tensor,
    coarse_attn: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor,
    num_heads: int,
    level0_h: int,
    level0_w: int,
    mode: str,
    divisor: int,
) -> Tensor:
    return topk_cross_attention_reference(
        query,
        feat,
        pos,
        coarse_attn,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
        (level0_h, level0_w),
        mode,
        divisor,
    )


@_topk_cross_attention.register_fake
def _(query: Tensor, *args: object) -> Tensor:
    return torch.empty_like(query)


OP_HANDLE = torch.ops.faseg_onnx.topk_cross_attention.default


def topk_cross_attention__plugin(
    query: Tensor,
    feat: Tensor,
    pos: Tensor,
    coarse_attn: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    level0_hw: tuple[int, int],
    mode: str = "window",
    divisor: int = 32,
) -> Tensor:
    """Same signature and result as the reference; exports as one contract node."""
    if mode not in TOPK_MODES:
        raise ValueError(f"unknown HRCA mode {mode!r}; expected one of {sorted(TOPK_MODES)}")
    c = query.shape[-1]
    if in_proj_bias is None:
        in_proj_bias = query.new_zeros(3 * c)
    if out_proj_bias is None:
        out_proj_bias = query.new_zeros(c)
    h0, w0 = (int(v) for v in level0_hw)
    return OP_HANDLE(
        query,
        feat,
        pos,
        coarse_attn,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        int(num_heads),
        h0,
        w0,
        mode,
        int(divisor),
    )


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "v", "v", "v", "i", "i", "i", "s", "i")
def topk_cross_attention_symbolic(
    g,
    query,
    feat,
    pos,
    coarse_attn,
    in_proj_weight,
    in_proj_bias,
    out_proj_weight,
    out_proj_bias,
    num_heads,
    level0_h,
    level0_w,
    mode,
    divisor,
):
    """TorchScript-exporter symbolic: the contract node, then ``Reshape(out, Shape(query))``."""
    out = g.op(
        f"{DOMAIN}::{TOPK_CROSS_ATTN_OP}",
        query,
        feat,
        pos,
        coarse_attn,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads_i=num_heads,
        divisor_i=divisor,
        mode_i=TOPK_MODES[mode],
        level0_h_i=level0_h,
        level0_w_i=level0_w,
        plugin_version_s=PLUGIN_VERSION,
        plugin_namespace_s=PLUGIN_NAMESPACE,
    )
    out.setType(query.type())
    return g.op("Reshape", out, g.op("Shape", query))


register_symbolic(OP_HANDLE, topk_cross_attention_symbolic, SYMBOLIC_OPSET)
