"""Exact MAC / parameter counts of faseg.model.complexity against hand-computed formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from faseg.model.complexity import FVCORE_BATCH_NORM_RULES, MacReport, count_macs, count_parameters
from faseg.model.ops import ms_deform_attn_reference
from torch import nn


class Fn(nn.Module):
    """Wraps a function of the inputs as a module."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def macs(fn_or_module, *inputs) -> int:
    module = fn_or_module if isinstance(fn_or_module, nn.Module) else Fn(fn_or_module)
    return count_macs(module, tuple(inputs)).total


# ---------------------------------------------------------------------------------------------- matmul-like


@pytest.mark.parametrize(
    ("c_in", "c_out", "k", "stride", "padding", "groups"),
    [(4, 6, 3, 2, 1, 1), (4, 6, 3, 2, 1, 2), (8, 8, 3, 1, 1, 8), (3, 5, 1, 1, 0, 1), (4, 4, (3, 5), 1, 0, 4)],
)
def test_conv2d(c_in, c_out, k, stride, padding, groups):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups)
    x = torch.randn(2, c_in, 9, 11)
    out = conv(x)
    kh, kw = (k, k) if isinstance(k, int) else k
    expected = 2 * c_out * (c_in // groups) * kh * kw * out.shape[2] * out.shape[3]
    assert macs(conv, x) == expected


def test_conv1d_and_transposed_conv():
    conv1 = nn.Conv1d(3, 5, 3, padding=1, bias=False)
    assert macs(conv1, torch.randn(2, 3, 7)) == 2 * 5 * 3 * 3 * 7
    # transposed: every input pixel scatters C_out/g·C_in·k² products
    convt = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
    x = torch.randn(2, 4, 5, 3)
    assert macs(convt, x) == 2 * 4 * (6 // 2) * 2 * 2 * 5 * 3


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (2, 5, 7), (2, 3, 4, 7)])
def test_linear(shape, bias):
    lin = nn.Linear(7, 9, bias=bias)
    x = torch.randn(*shape)
    assert macs(lin, x) == math.prod(shape) * 9


def test_bmm_matmul_einsum():
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert macs(torch.bmm, a, b) == 3 * 4 * 5 * 6
    assert macs(torch.matmul, a, b) == 3 * 4 * 5 * 6
    assert macs(lambda x, y: x @ y, torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6)) == 2 * 3 * 4 * 5 * 6
    # broadcast right operand and broadcast left operand: counted on the broadcast shapes
    assert macs(torch.matmul, torch.randn(2, 3, 4, 5), torch.randn(5, 6)) == 2 * 3 * 4 * 5 * 6
    assert macs(torch.matmul, torch.randn(4, 5), torch.randn(3, 5, 6)) == 3 * 4 * 5 * 6
    assert macs(torch.mm, torch.randn(4, 5), torch.randn(5, 6)) == 4 * 5 * 6
    assert macs(torch.mv, torch.randn(4, 5), torch.randn(5)) == 4 * 5
    assert macs(lambda c, x, y: torch.baddbmm(c, x, y), torch.randn(3, 4, 6), a, b) == 3 * 4 * 5 * 6
    # the Mask2Former mask einsum: B·Q·C·H·W
    q, f = torch.randn(2, 10, 8), torch.randn(2, 8, 6, 7)
    assert macs(lambda x, y: torch.einsum("bqc,bchw->bqhw", x, y), q, f) == 2 * 10 * 8 * 6 * 7
    assert macs(lambda x, y: torch.einsum("bij,bjk->bik", x, y), a, b) == 3 * 4 * 5 * 6


def test_scaled_dot_product_attention():
    q, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4)
    for ev in (4, 6):  # equal head dims take the fused CPU kernel, unequal ones the math fallback
        v = torch.randn(2, 3, 7, ev)
        assert macs(F.scaled_dot_product_attention, q, k, v) == 2 * 3 * 5 * 7 * (4 + ev)


def _mha_macs(b, l_q, s, e):
    return b * l_q * e * e + 2 * b * s * e * e + 2 * b * l_q * s * e + b * l_q * e * e


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_multihead_attention(need_weights, train):
    b, l_q, s, e = 2, 5, 7, 8
    mha = nn.MultiheadAttention(e, 2, batch_first=True, dropout=0.0).train(train)
    q, kv = torch.randn(b, l_q, e), torch.randn(b, s, e)
    cross = Fn(lambda x, y: mha(x, y, y, need_weights=need_weights)[0])
    self_attn = Fn(lambda x: mha(x, x, x, need_weights=need_weights)[0])
    assert macs(cross, q, kv) == _mha_macs(b, l_q, s, e)
    assert macs(self_attn, q) == _mha_macs(b, l_q, l_q, e)
    # with a boolean mask (baddbmm / masked path)
    mask = torch.zeros(l_q, s, dtype=torch.bool)
    mask[:, 0] = True
    masked = Fn(lambda x, y: mha(x, y, y, attn_mask=mask, need_weights=need_weights)[0])
    assert macs(masked, q, kv) == _mha_macs(b, l_q, s, e)


def test_mha_fast_path_rule_and_fastpath_restored():
    b, l_q, e, h = 2, 5, 8, 2
    mha = nn.MultiheadAttention(e, h, batch_first=True).eval()
    x = torch.randn(b, l_q, e)

    def native(t):
        return torch._native_multi_head_attention(
            t, t, t, e, h, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias
        )[0]

    assert macs(native, x) == _mha_macs(b, l_q, l_q, e)
    before = torch.backends.mha.get_fastpath_enabled()
    count_macs(Fn(lambda t: mha(t, t, t)[0]), x)
    assert torch.backends.mha.get_fastpath_enabled() == before


# ----------------------------------------------------------------------------------- fvcore elementwise rules


@pytest.mark.parametrize("align_corners", [False, True])
def test_grid_sample_four_per_output_element(align_corners):
    x = torch.randn(2, 3, 6, 5)
    grid = torch.rand(2, 4, 7, 2) * 2 - 1
    fn = lambda v, g: F.grid_sample(v, g, align_corners=align_corners)  # noqa: E731
    assert macs(fn, x, grid) == 4 * 2 * 3 * 4 * 7
    nearest = lambda v, g: F.grid_sample(v, g, mode="nearest", align_corners=align_corners)  # noqa: E731
    assert macs(nearest, x, grid) == 4 * 2 * 3 * 4 * 7  # fvcore assumes bilinear for any mode


def test_interpolate():
    x = torch.randn(2, 3, 5, 6)
    bilinear = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    assert macs(bilinear, x) == 4 * 2 * 3 * 10 * 12
    sized = lambda t: F.interpolate(t, size=(7, 9), mode="bilinear", align_corners=True)  # noqa: E731
    assert macs(sized, x) == 4 * 2 * 3 * 7 * 9
    nearest = lambda t: F.interpolate(t, size=(7, 9), mode="nearest")  # noqa: E731
    assert macs(nearest, x) == 2 * 3 * 7 * 9
    assert macs(lambda t: F.adaptive_avg_pool2d(t, 2), x) == 2 * 3 * 5 * 6


def test_norms():
    x = torch.randn(2, 8, 5, 3)
    assert macs(nn.GroupNorm(4, 8), x) == 5 * x.numel()
    assert macs(nn.GroupNorm(4, 8, affine=False), x) == 4 * x.numel()
    t = torch.randn(2, 7, 6)
    assert macs(nn.LayerNorm(6), t) == 5 * t.numel()
    assert macs(nn.LayerNorm(6, elementwise_affine=False), t) == 4 * t.numel()
    bn = nn.BatchNorm2d(8).eval()
    assert macs(bn, x) == 0  # detectron2's FlopCountAnalysis ignores aten::batch_norm
    assert count_macs(bn, (x,), rules=FVCORE_BATCH_NORM_RULES).total == 2 * x.numel()
    assert count_macs(bn.train(), (x,), rules=FVCORE_BATCH_NORM_RULES).total == 5 * x.numel()


def test_elementwise_ops_are_free():
    x = torch.randn(2, 3, 4, 5)
    fn = lambda t: (t.relu() + t * 2).softmax(-1).sigmoid().exp().sum() / t.mean()  # noqa: E731
    assert macs(fn, x) == 0
    assert macs(lambda a, b: torch.einsum("bi,bj->bij", a, b), torch.randn(2, 5), torch.randn(2, 4)) == 0


def test_ms_deform_attn_reference_counts_its_grid_samples():
    b, n_heads, head_dim, n_q, n_points = 2, 2, 3, 5, 4
    shapes = [(3, 4), (2, 2), (5, 3)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(b, s, n_heads, head_dim)
    loc = torch.rand(b, n_q, n_heads, len(shapes), n_points, 2)
    attn = torch.rand(b, n_q, n_heads, len(shapes), n_points)
    fn = lambda v, lo, a: ms_deform_attn_reference(v, shapes, lo, a)  # noqa: E731
    report = count_macs(Fn(fn), (value, loc, attn))
    assert report.total == 4 * b * n_heads * head_dim * n_q * n_points * len(shapes)
    assert set(report.by_op) == {"aten::grid_sampler_2d"}


def test_custom_rules_override_and_remove():
    conv = nn.Conv2d(2, 3, 1)
    x = torch.randn(1, 2, 4, 4)
    assert count_macs(conv, x, rules={"aten::convolution": None}).total == 0
    report = count_macs(nn.ReLU(), x, rules={"aten::relu": lambda a, out: a["self"].numel()})
    assert report.total == x.numel()
    assert report.by_op == {"aten::relu": x.numel()}


# ----------------------------------------------------------------------------------------- module attribution


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.proj = nn.Linear(4, 6)

    def forward(self, x):
        y = self.conv(x).flatten(2).transpose(1, 2)  # (B, HW, 4)
        return self.proj(y)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.body = nn.Sequential(Block(), nn.ReLU())
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = self.body(self.stem(x))  # (B, HW, 6)
        y = self.head(y) + self.head(y)  # the same module twice
        return y @ y.transpose(1, 2)  # MACs in the root itself


def test_module_attribution():
    b, h, w = 2, 5, 6
    hw = h * w
    x = torch.randn(b, 3, h, w)
    model = Toy()
    stem = b * 4 * 3 * hw
    conv = b * 4 * 4 * 9 * hw
    proj = b * hw * 4 * 6
    head = 2 * (b * hw * 6 * 2)
    root_own = b * hw * 2 * hw
    report = count_macs(model, (x,))
    assert report.total == stem + conv + proj + head + root_own
    assert report.by_module == {
        "": report.total,
        "stem": stem,
        "body": conv + proj,
        "body.0": conv + proj,
        "body.1": 0,
        "head": head,
    }
    top = sum(v for k, v in report.by_module.items() if k and "." not in k)
    assert top + root_own == report.total
    assert sum(report.by_op.values()) == report.total
    assert report.by_op["aten::convolution"] == stem + conv

    deep = count_macs(model, x, max_depth=3)
    assert deep.by_module["body.0.conv"] == conv and deep.by_module["body.0.proj"] == proj
    assert deep.total == report.total
    assert "model" in report.format() and "body.0" in report.format()


def test_eval_no_grad_mode_left_alone_and_hooks_removed():
    model = Toy().eval()
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        report = count_macs(model, x)
    assert isinstance(report, MacReport) and report.total > 0
    assert not model.training
    assert count_macs(model.train(), x).total == report.total
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_meta_device_gives_the_same_counts():
    x = torch.randn(2, 3, 5, 6)
    model = Toy()
    real = count_macs(model, x)
    meta = count_macs(Toy().to("meta"), x.to("meta"))
    assert meta == real


def test_hooks_removed_when_forward_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("boom")

    model = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        count_macs(model, torch.randn(1, 2))
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_inputs_convention():
    class Two(nn.Module):
        def forward(self, a, b):
            return a @ b

    assert count_macs(Two(), (torch.randn(3, 4), torch.randn(4, 5))).total == 3 * 4 * 5

    class ListIn(nn.Module):
        def forward(self, xs):
            return [x @ x.T for x in xs]

    assert count_macs(ListIn(), [torch.randn(3, 4), torch.randn(2, 4)]).total == 3 * 4 * 3 + 2 * 4 * 2


# ---------------------------------------------------------------------------------------------- parameters


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    model[0].bias.requires_grad_(False)  # frozen parameters count
    model.register_buffer("table", torch.zeros(100))  # buffers do not
    expected = (3 * 4 + 4) + (4 + 4) + 4 * 2
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected - 4
    shared = nn.Sequential(model[0], model[0])
    assert count_parameters(shared) == 3 * 4 + 4
