"""The attention ops of faseg.model.ops against independent direct computations (CPU, fast)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from faseg.model.ops import (
    MultiheadAttention,
    hr_window_size,
    hrca_select,
    level_start_index,
    ms_deform_attn,
    ms_deform_attn_reference,
    multi_head_attention,
    register_kernel,
    registered_kernel,
    topk_cross_attention,
    topk_cross_attention_reference,
)
from torch import nn

# ------------------------------------------------------------------------------------- deformable attention

SHAPES = [(3, 4), (2, 2), (5, 3)]


def _bilinear_zero_padded(img: list[list[float]], loc_x: float, loc_y: float) -> float:
    """Sample img (H x W nested lists) at a normalised location, pixel-centre convention, zeros outside."""
    h, w = len(img), len(img[0])
    x = loc_x * w - 0.5
    y = loc_y * h - 0.5
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    total = 0.0
    for yy, wy in ((y0, 1.0 - fy), (y0 + 1, fy)):
        for xx, wx in ((x0, 1.0 - fx), (x0 + 1, fx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * img[yy][xx]
    return total


def _deform_attn_loops(value, shapes, loc, attn) -> torch.Tensor:
    """Direct loops over batch / query / head / level / point / channel."""
    b_sz, _, n_heads, head_dim = value.shape
    _, n_q, _, n_levels, n_points, _ = loc.shape
    val, lo, at = value.tolist(), loc.tolist(), attn.tolist()
    starts = level_start_index(shapes)
    out = [[[0.0] * (n_heads * head_dim) for _ in range(n_q)] for _ in range(b_sz)]
    for b in range(b_sz):
        # per level / head / channel image, token s = start + i * W + j
        imgs = [
            [
                [
                    [[val[b][starts[lvl] + i * w + j][h][d] for j in range(w)] for i in range(hh)]
                    for d in range(head_dim)
                ]
                for h in range(n_heads)
            ]
            for lvl, (hh, w) in enumerate(shapes)
        ]
        for q in range(n_q):
            for h in range(n_heads):
                for d in range(head_dim):
                    acc = 0.0
                    for lvl in range(n_levels):
                        for p in range(n_points):
                            x, y = lo[b][q][h][lvl][p]
                            acc += at[b][q][h][lvl][p] * _bilinear_zero_padded(imgs[lvl][h][d], x, y)
                    out[b][q][h * head_dim + d] = acc
    return torch.tensor(out, dtype=torch.float64)


def _deform_inputs(dtype=torch.float64, n_q=8, n_heads=2, head_dim=3, n_points=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = 2
    s = sum(h * w for h, w in SHAPES)
    value = torch.randn(b, s, n_heads, head_dim, generator=g, dtype=torch.float64)
    loc = torch.rand(b, n_q, n_heads, len(SHAPES), n_points, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    # exact borders, pixel centres and just-outside points, every (x, y) combination once per level
    for lvl, (h, w) in enumerate(SHAPES):
        xs = [0.0, 1.0, 0.5 / w, 1 - 0.5 / w, -0.5 / w, 1 + 0.5 / w, 1.0 / w, -1.0]
        ys = [0.0, 1.0, 0.5 / h, 1 - 0.5 / h, -0.5 / h, 1 + 0.5 / h, 1.0 / h, 2.0]
        slots = list(itertools.product(range(b), range(n_q), range(n_heads), range(n_points)))
        assert len(slots) >= len(xs) * len(ys)
        for (bi, qi, hi, pi), (x, y) in zip(slots, itertools.product(xs, ys)):
            loc[bi, qi, hi, lvl, pi] = torch.tensor([x, y], dtype=torch.float64)
    attn = torch.rand(b, n_q, n_heads, len(SHAPES), n_points, generator=g, dtype=torch.float64)
    attn = attn.flatten(-2).softmax(-1).view_as(attn)
    return value.to(dtype), loc.to(dtype), attn.to(dtype)


def test_level_start_index():
    assert level_start_index(SHAPES) == [0, 12, 16]


def test_ms_deform_attn_reference_matches_loops_float64():
    value, loc, attn = _deform_inputs()
    assert (loc < 0).any() and (loc > 1).any()
    expected = _deform_attn_loops(value, SHAPES, loc, attn)
    got = ms_deform_attn_reference(value, SHAPES, loc, attn)
    assert got.shape == (2, 8, 2 * 3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_ms_deform_attn_reference_matches_loops_float32():
    value, loc, attn = _deform_inputs(torch.float32, seed=1)
    expected = _deform_attn_loops(value.double(), SHAPES, loc.double(), attn.double())
    got = ms_deform_attn_reference(value, SHAPES, loc, attn)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)


def test_ms_deform_attn_pixel_centres_and_outside():
    """At a pixel centre the sample is the pixel; a point a whole pixel outside the map samples 0."""
    h, w = 3, 4
    value = torch.arange(h * w, dtype=torch.float64).view(1, h * w, 1, 1) + 1
    centres = [((j + 0.5) / w, (i + 0.5) / h) for i in range(h) for j in range(w)]
    outside = [(-1.0 / w, 0.5), (1 + 1.0 / w, 0.5), (0.5, -1.0 / h), (0.5, 1 + 1.0 / h)]
    loc = torch.tensor(centres + outside, dtype=torch.float64).view(1, -1, 1, 1, 1, 2)
    attn = torch.ones(1, loc.shape[1], 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn_reference(value, [(h, w)], loc, attn).flatten()
    expected = torch.cat([torch.arange(h * w, dtype=torch.float64) + 1, torch.zeros(4, dtype=torch.float64)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # on the outer border half of the border pixel survives: x = 0 → halfway between pixel −1 (zero) and 0
    border = torch.tensor([[0.0, 0.5 / h]], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    got = ms_deform_attn_reference(value, [(h, w)], border, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert got.item() == pytest.approx(0.5 * value[0, 0, 0, 0].item(), abs=1e-12)


def test_ms_deform_attn_rejects_wrong_token_count():
    value, loc, attn = _deform_inputs()
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn_reference(value[:, 1:], SHAPES, loc, attn)


def test_ms_deform_attn_dispatch_routes_and_restores():
    value, loc, attn = _deform_inputs(torch.float32)
    calls = []
    sentinel = torch.full((2, 8, 6), 7.0)

    def fake(v, shapes, lo, at):
        calls.append((v, shapes, lo, at))
        return sentinel

    previous = registered_kernel("ms_deform_attn", "cpu")
    try:
        register_kernel("ms_deform_attn", "cpu", fake)
        assert registered_kernel("ms_deform_attn", "cpu") is fake
        assert ms_deform_attn(value, SHAPES, loc, attn) is sentinel
        assert len(calls) == 1
        assert calls[0][0] is value and calls[0][2] is loc and calls[0][3] is attn
        assert list(calls[0][1]) == SHAPES
        register_kernel("ms_deform_attn", "cpu", None)
        assert registered_kernel("ms_deform_attn", "cpu") is None
        assert torch.equal(
            ms_deform_attn(value, SHAPES, loc, attn), ms_deform_attn_reference(value, SHAPES, loc, attn)
        )
        assert len(calls) == 1
        # a kernel for another device type does not capture CPU tensors
        register_kernel("ms_deform_attn", "cuda", fake)
        assert torch.equal(
            ms_deform_attn(value, SHAPES, loc, attn), ms_deform_attn_reference(value, SHAPES, loc, attn)
        )
        assert len(calls) == 1
    finally:
        register_kernel("ms_deform_attn", "cuda", None)
        register_kernel("ms_deform_attn", "cpu", previous)


def test_register_kernel_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        register_kernel("deform_conv", "cpu", lambda *a: None)


# ------------------------------------------------------------------------------------------------------ HRCA

H0, W0, DIV, WIN = 4, 6, 8, 8  # S0 = 24, k = 3
H3, W3 = H0 * WIN, W0 * WIN


def _coarse_attention() -> tuple[torch.Tensor, list[list[int]]]:
    """(B=2, Q=4, S0=24) post-softmax-like rows with dyadic entries (exact sums), and the expected top-3.

    Batch 0: scores 17 → 1.5, 3 → 1.0, 9 and 20 tie at 0.5 (k-th place: 9 must win), the rest ≤ 1/32.
    Batch 1: 0 and 23 tie at 1.0 (0 first), 5 and 6 tie at 0.75 for the k-th place (5 wins), 11 → 0.5.
    """
    a = torch.zeros(2, 4, H0 * W0, dtype=torch.float64)
    a[0, 0, 17], a[0, 0, 3] = 0.75, 0.25
    a[0, 1, 17], a[0, 1, 9] = 0.75, 0.25
    a[0, 2, 3], a[0, 2, 20] = 0.75, 0.25
    a[0, 3, 9], a[0, 3, 20] = 0.25, 0.25
    rest = [s for s in range(H0 * W0) if s not in (17, 3, 9, 20)][:16]
    a[0, 3, rest] = 1.0 / 32
    a[1, :, 23] = 0.25
    a[1, :, 0] = 0.25
    a[1, :, 11] = 0.125
    a[1, :2, 5] = 0.375
    a[1, 2:, 6] = 0.375
    assert torch.allclose(a.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    return a.float(), [[17, 3, 9], [0, 23, 5]]


def _coordinate_maps(b: int = 2, offset: float = 0.0) -> torch.Tensor:
    """(B, 4, H3, W3): channels = row, col, batch, row·W3 + col (+ offset)."""
    rows = torch.arange(H3, dtype=torch.float32).view(H3, 1).expand(H3, W3)
    cols = torch.arange(W3, dtype=torch.float32).view(1, W3).expand(H3, W3)
    maps = []
    for bi in range(b):
        maps.append(torch.stack([rows, cols, torch.full_like(rows, float(bi)), rows * W3 + cols]) + offset)
    return torch.stack(maps)


def test_hrca_window_selection_exact():
    attn, expected = _coarse_attention()
    feat, pos = _coordinate_maps(), _coordinate_maps(offset=1000.0)
    memory, memory_pos, idx = hrca_select(attn, feat, pos, (H0, W0), mode="window", divisor=DIV)
    assert idx.tolist() == expected
    assert memory.shape == (2, 3 * WIN * WIN, 4) and memory_pos.shape == memory.shape
    for b in range(2):
        for j, token in enumerate(expected[b]):
            r, c = divmod(token, W0)
            block = memory[b, j * 64 : (j + 1) * 64]
            block_pos = memory_pos[b, j * 64 : (j + 1) * 64]
            pix = torch.arange(64)
            rows = (WIN * r + pix // WIN).float()
            cols = (WIN * c + pix % WIN).float()
            want = torch.stack([rows, cols, torch.full_like(rows, float(b)), rows * W3 + cols], dim=1)
            assert torch.equal(block, want), (b, token)
            assert torch.equal(block_pos, want + 1000.0), (b, token)


@pytest.mark.parametrize(("hw0", "k"), [((16, 16), 8), ((16, 22), 11)])
def test_hrca_k_is_s0_over_32(hw0, k):
    h0, w0 = hw0
    attn = torch.rand(1, 3, h0 * w0)
    feat = torch.randn(1, 2, 8 * h0, 8 * w0)
    memory, memory_pos, idx = hrca_select(attn, feat, feat.clone(), hw0)  # default divisor 32
    assert idx.shape == (1, k)
    assert memory.shape == (1, k * 64, 2) and memory_pos.shape == (1, k * 64, 2)
    assert k == (h0 * w0) // 32
    # idx are the k best tokens of the query-summed score
    assert torch.equal(idx[0].sort().values, attn.sum(1)[0].topk(k).indices.sort().values)


def test_hr_window_size():
    assert hr_window_size((H0, W0), (H3, W3)) == 8
    assert hr_window_size((16, 22), (64, 88)) == 4
    for bad in [(32, 47), (31, 48), (32, 36), (32, 24), (33, 49)]:
        with pytest.raises(ValueError, match="multiple"):
            hr_window_size((H0, W0), bad)
    with pytest.raises(ValueError, match="multiple"):
        hrca_select(torch.rand(1, 2, 24), torch.randn(1, 2, 32, 47), torch.randn(1, 2, 32, 47), (H0, W0))


def test_hrca_too_small_and_unknown_mode():
    with pytest.raises(ValueError):
        hrca_select(torch.rand(1, 2, 24), torch.randn(1, 2, 32, 48), torch.randn(1, 2, 32, 48), (H0, W0))
    with pytest.raises(ValueError, match="mode"):
        hrca_select(
            torch.rand(1, 2, 24), torch.randn(1, 2, 32, 48), torch.randn(1, 2, 32, 48), (H0, W0), "nearest", 8
        )


def _expected_bilinear_pixels(attn: torch.Tensor, n: int) -> list[list[int]]:
    score = attn.double().sum(1).view(attn.shape[0], 1, H0, W0).float()
    up = F.interpolate(score, size=(H3, W3), mode="bilinear", align_corners=False).flatten(1)
    out = []
    for row in up.tolist():
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))  # descending, lower index on ties
        out.append(order[:n])
    return out


@pytest.mark.parametrize("token", [(1, 2), (0, 5), (3, 0)])
def test_hrca_bilinear_selection(token):
    b, q = 2, 3
    attn = torch.full((b, q, H0 * W0), 1.0 / 32)
    attn[0, :, token[0] * W0 + token[1]] += 0.25
    attn[1, :, (H0 - 1 - token[0]) * W0 + token[1]] += 0.5
    feat, pos = _coordinate_maps(), _coordinate_maps(offset=-500.0)
    memory, memory_pos, idx = hrca_select(attn, feat, pos, (H0, W0), mode="bilinear", divisor=DIV)
    n = (H0 * W0 // DIV) * WIN * WIN
    assert idx.shape == (b, n) and memory.shape == (b, n, 4)
    expected = _expected_bilinear_pixels(attn, n)
    assert idx.tolist() == expected
    for bi in range(b):
        pix = torch.tensor(expected[bi])
        want = feat[bi].flatten(1).t()[pix]
        assert torch.equal(memory[bi], want)
        assert torch.equal(memory_pos[bi], want - 500.0)
        # the single hottest pixel sits in the window beneath the raised token
        r, c = divmod(int(pix[0]), W3)
        hot = token if bi == 0 else (H0 - 1 - token[0], token[1])
        assert (r // WIN, c // WIN) == hot


def _gather_windows(x: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """x (C, H3, W3) -> (len(tokens)·64, C), windows in ``tokens`` order, pixels row-major."""
    blocks = []
    for t in tokens:
        r, c = divmod(t, W0)
        blocks.append(x[:, WIN * r : WIN * (r + 1), WIN * c : WIN * (c + 1)].reshape(x.shape[0], -1).t())
    return torch.cat(blocks)


@pytest.mark.parametrize("mode", ["window", "bilinear"])
def test_topk_cross_attention_matches_torch_mha(mode):
    torch.manual_seed(0)
    c, heads = 8, 2
    attn, expected_tokens = _coarse_attention()
    b, q = attn.shape[:2]
    query = torch.randn(b, q, c)
    feat, pos = torch.randn(b, c, H3, W3), torch.randn(b, c, H3, W3)
    mha = nn.MultiheadAttention(c, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    got = topk_cross_attention_reference(
        query,
        feat,
        pos,
        attn,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.out_proj.weight,
        mha.out_proj.bias,
        heads,
        (H0, W0),
        mode,
        DIV,
    )
    if mode == "window":
        mem = torch.stack([_gather_windows(feat[i], expected_tokens[i]) for i in range(b)])
        mem_pos = torch.stack([_gather_windows(pos[i], expected_tokens[i]) for i in range(b)])
    else:
        pixels = _expected_bilinear_pixels(attn, 3 * 64)
        mem = torch.stack([feat[i].flatten(1).t()[pixels[i]] for i in range(b)])
        mem_pos = torch.stack([pos[i].flatten(1).t()[pixels[i]] for i in range(b)])
    with torch.no_grad():
        want, _ = mha(query, mem + mem_pos, mem, need_weights=False)
    assert got.shape == (b, q, c)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_topk_cross_attention_dispatch():
    attn, _ = _coarse_attention()
    args = (torch.randn(2, 4, 8), torch.randn(2, 8, H3, W3), torch.randn(2, 8, H3, W3), attn)
    weights = (torch.randn(24, 8), torch.randn(24), torch.randn(8, 8), torch.randn(8))
    seen = []

    def fake(*a):
        seen.append(a)
        return torch.zeros(2, 4, 8)

    previous = registered_kernel("topk_cross_attention", "cpu")
    try:
        register_kernel("topk_cross_attention", "cpu", fake)
        out = topk_cross_attention(*args, *weights, 2, (H0, W0), "bilinear", DIV)
        assert torch.equal(out, torch.zeros(2, 4, 8))
        assert seen[0][-4:] == (2, (H0, W0), "bilinear", DIV)
        register_kernel("topk_cross_attention", "cpu", None)
        out = topk_cross_attention(*args, *weights, 2, (H0, W0), "window", DIV)
        ref = topk_cross_attention_reference(*args, *weights, 2, (H0, W0), "window", DIV)
        assert torch.equal(out, ref) and len(seen) == 1
    finally:
        register_kernel("topk_cross_attention", "cpu", previous)


# ------------------------------------------------------------------------------------------- plain attention


def _random_mask(b, heads, q, s, g) -> torch.Tensor:
    mask = torch.rand(b, heads, q, s, generator=g) < 0.6
    free = torch.randint(0, s, (b, heads, q), generator=g)
    mask.scatter_(-1, free.unsqueeze(-1), False)  # one open key per row
    mask[0, 0, 0] = False  # and one row fully open
    assert not mask.all(-1).any()
    return mask


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("per_head", [True, False])
def test_multi_head_attention_matches_torch(dtype, tol, per_head):
    g = torch.Generator().manual_seed(3)
    b, q, s, c, heads = 2, 5, 7, 12, 3
    mha = nn.MultiheadAttention(c, heads, batch_first=True).to(dtype)
    with torch.no_grad():
        mha.in_proj_bias.normal_(generator=g)
        mha.out_proj.bias.normal_(generator=g)
    query = torch.randn(b, q, c, generator=g, dtype=dtype)
    key = torch.randn(b, s, c, generator=g, dtype=dtype)
    value = torch.randn(b, s, c, generator=g, dtype=dtype)
    mask = _random_mask(b, heads if per_head else 1, q, s, g)
    torch_mask = mask.expand(b, heads, q, s).reshape(b * heads, q, s)

    out, weights = multi_head_attention(
        query,
        key,
        value,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.out_proj.weight,
        mha.out_proj.bias,
        heads,
        mask,
    )
    with torch.no_grad():
        want_out, want_w = mha(query, key, value, attn_mask=torch_mask, need_weights=True)
        f_out, f_w = F.multi_head_attention_forward(
            query.transpose(0, 1),
            key.transpose(0, 1),
            value.transpose(0, 1),
            c,
            heads,
            mha.in_proj_weight,
            mha.in_proj_bias,
            None,
            None,
            False,
            0.0,
            mha.out_proj.weight,
            mha.out_proj.bias,
            training=False,
            need_weights=True,
            attn_mask=torch_mask,
            average_attn_weights=True,
        )
    assert out.shape == (b, q, c) and weights.shape == (b, q, s)
    torch.testing.assert_close(out, want_out, rtol=0, atol=tol)
    torch.testing.assert_close(weights, want_w, rtol=0, atol=tol)
    torch.testing.assert_close(out, f_out.transpose(0, 1), rtol=0, atol=tol)
    torch.testing.assert_close(weights, f_w, rtol=0, atol=tol)
    # blocked keys get exactly zero probability in every head, hence in the head average
    if not per_head:
        assert (weights[mask[:, 0]] == 0).all()


def test_multihead_attention_module_loads_torch_weights():
    torch.manual_seed(4)
    c, heads = 8, 2
    ref = nn.MultiheadAttention(c, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_bias.normal_()
    ours = MultiheadAttention(c, heads)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, mem = torch.randn(2, 4, c), torch.randn(2, 6, c)
    out, w = ours(x, mem, mem)
    with torch.no_grad():
        want_out, want_w = ref(x, mem, mem)
    torch.testing.assert_close(out, want_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(w, want_w, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
