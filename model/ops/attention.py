"""Multi-head attention written out explicitly (batch-first).

Numerically this is ``torch.nn.functional.multi_head_attention_forward`` with ``need_weights=True`` and
``average_attn_weights=True``: the same packed ``in_proj`` ([q; k; v] rows) and ``out_proj`` parameters, so
official ``nn.MultiheadAttention`` weights load unchanged. It is written out because FASeg consumes the
head-averaged probabilities (DFPQ, HRCA) and because an explicit graph exports cleanly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_head_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    attn_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention of ``query`` over ``key``/``value``.

    Args:
        query: (B, Q, C); key: (B, S, C); value: (B, S, C).
        in_proj_weight: (3C, C) rows [W_q; W_k; W_v]; in_proj_bias: (3C,).
        attn_mask: bool, True = blocked, broadcastable to (B, num_heads, Q, S) — e.g. (B, 1, Q, S).
            Rows must not be fully blocked (callers apply the official "unmask full rows" rule first).

    Returns:
        out: (B, Q, C) after ``out_proj``; weights: (B, Q, S) post-softmax probabilities averaged over heads.
    """
    b, q_len, c = query.shape
    s_len = key.shape[1]
    head_dim = c // num_heads
    w_q, w_k, w_v = in_proj_weight.chunk(3, dim=0)
    b_q = b_k = b_v = None
    if in_proj_bias is not None:
        b_q, b_k, b_v = in_proj_bias.chunk(3, dim=0)
    q = F.linear(query, w_q, b_q).view(b, q_len, num_heads, head_dim).transpose(1, 2)  # (B, Nh, Q, Dh)
    k = F.linear(key, w_k, b_k).view(b, s_len, num_heads, head_dim).transpose(1, 2)  # (B, Nh, S, Dh)
    v = F.linear(value, w_v, b_v).view(b, s_len, num_heads, head_dim).transpose(1, 2)  # (B, Nh, S, Dh)
    logits = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))  # (B, Nh, Q, S)
    if attn_mask is not None:
        logits = logits.masked_fill(attn_mask, float("-inf"))
    probs = logits.softmax(dim=-1)  # (B, Nh, Q, S)
    out = torch.matmul(probs, v)  # (B, Nh, Q, Dh)
    out = out.transpose(1, 2).reshape(b, q_len, c)  # (B, Q, C)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    return out, probs.mean(dim=1)


class MultiheadAttention(nn.Module):
    """Parameter holder with ``nn.MultiheadAttention``'s names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.weight``, ``out_proj.bias``), so official checkpoints load; the math is
    :func:`multi_head_attention`. Batch-first."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        # nn.MultiheadAttention's own init (the decoder layers then xavier-init every >1-dim parameter).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return multi_head_attention(
            query,
            key,
            value,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            self.num_heads,
            attn_mask,
        )
