"""High-resolution cross-attention (HRCA): top-k selection of 1/4-resolution tokens, then attention.

Official behaviour (``mode="window"``, spec §2.4, read from F: mask2former_transformer_decoder.py:518-559):

1. score[b, s] = Σ_q A[b, q, s] over the head-averaged 1/32 cross-attention A of the current round.
2. The k = S0 // divisor highest-scoring 1/32 tokens are kept (divisor = ``omega_rate`` = 32).
3. Every 1/32 token owns the non-overlapping window × window patch (window = 8) of the 1/4 map beneath it
   (row-major window order equals the 1/32 token order); the selected windows of the 1/4 features and of
   their positional encodings are gathered into k·64 memory tokens.
4. Queries attend to that memory with no attention mask.

``mode="bilinear"`` is the paper text's reading: the score map is bilinearly upsampled to 1/4 and the
top (S0 // divisor)·window² single pixels are kept (the same token budget as ``window``).

Ties: the official code sorts with ``torch.sort`` (unstable); here a stable descending sort makes ties pick
the lower index first, which is also ONNX ``TopK``'s documented tie rule. Attention does not depend on the
order of its keys, so the gathered order is irrelevant to the result.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import multi_head_attention


def hr_window_size(level0_hw: tuple[int, int], hr_hw: tuple[int, int]) -> int:
    """Side of the 1/4 window beneath one 1/32 token (8 when the input is a multiple of 32)."""
    h0, w0 = level0_hw
    h3, w3 = hr_hw
    window = math.isqrt((h3 * w3) // (h0 * w0))
    if h3 != window * h0 or w3 != window * w0:
        raise ValueError(
            f"HRCA needs the high-resolution map {h3}x{w3} to be an exact multiple of the 1/32 map {h0}x{w0}; "
            "input height and width must be multiples of 32"
        )
    return window


def topk_indices(score: Tensor, k: int) -> Tensor:
    """Indices of the k largest entries along the last axis, ties broken by the lower index. (B, N) -> (B, k)."""
    return torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]


def _windows(x: Tensor, window: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/ws)·(W/ws), ws·ws, C), windows in row-major order, pixels row-major inside."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)  # (B, C, H0, ws, W0, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // window) * (w // window), window * window, c)


def hrca_select(
    coarse_attn: Tensor,
    feat: Tensor,
    pos: Tensor,
    level0_hw: tuple[int, int],
    mode: str = "window",
    divisor: int = 32,
) -> tuple[Tensor, Tensor, Tensor]:
    """Select the high-resolution memory.

    Args:
        coarse_attn: (B, Q, S0) head-averaged post-softmax 1/32 cross-attention.
        feat: (B, C, H3, W3) 1/4 features (+ level embedding); pos: (B, C, H3, W3) their positional encoding.
        level0_hw: (H0, W0) of the 1/32 map, S0 = H0·W0.

    Returns:
        memory (B, N, C), memory_pos (B, N, C), and the selected indices: (B, k) 1/32 token indices for
        ``window`` (N = k·window²), (B, N) 1/4 pixel indices for ``bilinear``.
    """
    h0, w0 = level0_hw
    b, c, h3, w3 = feat.shape
    window = hr_window_size(level0_hw, (h3, w3))
    k = (h0 * w0) // divisor
    if k < 1:
        raise ValueError(f"HRCA selects S0 // divisor = {h0 * w0} // {divisor} = 0 windows; the input is too small")
    score = coarse_attn.sum(dim=1)  # (B, S0)
    if mode == "window":
        idx = topk_indices(score, k)  # (B, k)
        gather = idx[:, :, None, None].expand(b, k, window * window, c)
        memory = torch.gather(_windows(feat, window), 1, gather).flatten(1, 2)  # (B, k·ws², C)
        memory_pos = torch.gather(_windows(pos, window), 1, gather).flatten(1, 2)
        return memory, memory_pos, idx
    if mode == "bilinear":
        up = F.interpolate(score.view(b, 1, h0, w0), size=(h3, w3), mode="bilinear", align_corners=False)
        n = k * window * window
        idx = topk_indices(up.flatten(1), n)  # (B, N)
        gather = idx[:, :, None].expand(b, n, c)
        memory = torch.gather(feat.flatten(2).transpose(1, 2), 1, gather)  # (B, N, C)
        memory_pos = torch.gather(pos.flatten(2).transpose(1, 2), 1, gather)
        return memory, memory_pos, idx
    raise ValueError(f"unknown HRCA mode {mode!r}; expected 'window' or 'bilinear'")


def topk_cross_attention_reference(
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
    """HRCA cross-attention: select the memory (:func:`hrca_select`), then unmasked multi-head attention
    with q = ``query`` (content + static query PE), k = memory + memory_pos, v = memory.

    Shapes: query (B, Q, C); feat, pos (B, C, H3, W3); coarse_attn (B, Q, S0). Returns (B, Q, C).
    """
    memory, memory_pos, _ = hrca_select(coarse_attn, feat, pos, level0_hw, mode, divisor)
    out, _ = multi_head_attention(
        query,
        memory + memory_pos,
        memory,
        in_proj_weight,
        in_proj_bias,
        out_proj_weight,
        out_proj_bias,
        num_heads,
    )
    return out
