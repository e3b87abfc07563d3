"""LDA-AQU upsampler (faseg.model.lda_aqu): reduction to fixed upsamplers, an independent reference, gradients,
and the pixel-decoder switch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from faseg.model import build_model, get_preset
from faseg.model.config import LDAAQUConfig
from faseg.model.lda_aqu import LDAAQU, lda_aqu_upsample


def _x(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _uniform_attention(module: LDAAQU) -> LDAAQU:
    """q = 0 → every logit is 0 → equal weights; the last offset conv is zero at init → zero offsets."""
    with torch.no_grad():
        module.proj_q.weight.zero_()
    assert not module.conv_offset[-1].weight.any() and not module.conv_offset[-1].bias.any()
    return module


@pytest.mark.parametrize(("size", "out"), [((8, 8), (16, 16)), ((5, 7), (10, 14)), ((5, 7), (12, 16))])
def test_kernel_1_is_bilinear_upsampling(size: tuple[int, int], out: tuple[int, int]) -> None:
    """One neighbour, zero offsets: the softmax weight is 1 whatever q, and the sample sits where
    F.interpolate(bilinear, align_corners=False) reads (borders included)."""
    torch.manual_seed(0)
    module = LDAAQU(16, LDAAQUConfig(kernel_size=1, reduction=2, groups=2, heads=2)).eval()
    x = _x(2, 16, *size)
    expected = F.interpolate(x, size=out, mode="bilinear", align_corners=False)
    with torch.no_grad():
        torch.testing.assert_close(module(x, out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("size", "out"), [((8, 8), (16, 16)), ((5, 7), (12, 16))])
@pytest.mark.parametrize("kernel", [3, 5])
def test_zero_offsets_and_equal_weights_is_a_box_filter_of_the_bilinear_map(
    size: tuple[int, int], out: tuple[int, int], kernel: int
) -> None:
    """Zero offsets + equal weights: the mean over the k×k output-pixel neighbourhood of the bilinearly
    upsampled map, edges replicated — computed here with interpolate + replicate pad + average pooling."""
    torch.manual_seed(0)
    module = _uniform_attention(LDAAQU(16, LDAAQUConfig(kernel_size=kernel, reduction=4))).eval()
    x = _x(2, 16, *size)
    up = F.interpolate(x, size=out, mode="bilinear", align_corners=False)
    r = kernel // 2
    expected = F.avg_pool2d(F.pad(up, (r, r, r, r), mode="replicate"), kernel, stride=1)
    with torch.no_grad():
        torch.testing.assert_close(module(x, out), expected, rtol=1e-5, atol=1e-5)


def _bilinear_border(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (C, H, W) read at continuous input coordinates (x, y) (pixel centres at integers), coordinates
    clamped to the map (border padding)."""
    _, h, w = img.shape
    x = min(max(x, 0.0), w - 1.0)
    y = min(max(y, 0.0), h - 1.0)
    x0, y0 = math.floor(x), math.floor(y)
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return (
        img[:, y0, x0] * (1 - fx) * (1 - fy)
        + img[:, y0, x1] * fx * (1 - fy)
        + img[:, y1, x0] * (1 - fx) * fy
        + img[:, y1, x1] * fx * fy
    )


def test_matches_a_loop_reference_with_offsets_groups_heads_and_bias() -> None:
    """The whole formula, pixel by pixel, against random offsets (2 groups, 2 heads, key bias)."""
    g = torch.Generator().manual_seed(5)
    b, c, ck, h, w, ho, wo, k, groups, heads = 1, 8, 4, 3, 4, 6, 8, 3, 2, 2
    value, key = torch.randn(b, c, h, w, generator=g), torch.randn(b, ck, h, w, generator=g)
    query = torch.randn(b, ck, ho, wo, generator=g)
    offsets = torch.randn(b, groups, k * k, 2, ho, wo, generator=g) * 1.5
    bias = torch.randn(heads, ck // heads, k * k, generator=g) * 0.1
    out = lda_aqu_upsample(value, key, query, offsets, k, heads, bias)

    expected = torch.zeros(b, c, ho, wo)
    grid = [(dx, dy) for dy, dx in itertools.product(range(-1, 2), repeat=2)]  # row-major, (dx, dy)
    sy, sx = h / ho, w / wo
    dk, dv = ck // heads, c // heads
    for i, j in itertools.product(range(ho), range(wo)):
        keys = torch.zeros(ck, k * k)
        values = torch.zeros(c, k * k)
        for n, (dx, dy) in enumerate(grid):
            for grp in range(groups):
                ox, oy = offsets[0, grp, n, 0, i, j].item(), offsets[0, grp, n, 1, i, j].item()
                x_in = (j + dx + ox + 0.5) * sx - 0.5  # output position → input coordinate
                y_in = (i + dy + oy + 0.5) * sy - 0.5
                kc, vc = (
                    slice(grp * ck // groups, (grp + 1) * ck // groups),
                    slice(grp * c // groups, (grp + 1) * c // groups),
                )
                keys[kc, n] = _bilinear_border(key[0, kc], x_in, y_in)
                values[vc, n] = _bilinear_border(value[0, vc], x_in, y_in)
        for hd in range(heads):
            kh = keys[hd * dk : (hd + 1) * dk] + bias[hd]  # (dk, k²)
            logits = query[0, hd * dk : (hd + 1) * dk, i, j] @ kh / math.sqrt(dk)  # (k²,)
            expected[0, hd * dv : (hd + 1) * dv, i, j] = values[hd * dv : (hd + 1) * dv] @ logits.softmax(0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_offsets_are_in_output_pixels() -> None:
    """k = 1 with every offset (+1, 0): each output pixel reads its right-hand neighbour of the bilinear map."""
    x = _x(1, 4, 4, 5)
    up = F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=False)
    offsets = torch.zeros(1, 1, 1, 2, 8, 10)
    offsets[:, :, :, 0] = 1.0
    out = lda_aqu_upsample(x, x[:, :2], torch.zeros(1, 2, 8, 10), offsets, kernel_size=1, num_heads=1)
    expected = torch.cat((up[..., 1:], up[..., -1:]), -1)  # shifted left, last column replicated
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    module = LDAAQU(32, LDAAQUConfig()).train()
    with torch.no_grad():  # move the zero-initialised last offset conv off zero, or nothing upstream of it learns
        module.conv_offset[-1].weight.normal_(0, 1e-2)
    x = _x(2, 32, 6, 6).requires_grad_()
    module(x, (12, 12)).square().mean().backward()
    frozen = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert frozen == [] and x.grad is not None and x.grad.abs().sum() > 0


def test_invalid_config_raises() -> None:
    with pytest.raises(ValueError, match="odd"):
        LDAAQU(32, LDAAQUConfig(kernel_size=2))
    with pytest.raises(ValueError, match="divisible"):
        LDAAQU(32, LDAAQUConfig(reduction=4, groups=3))


def test_pixel_decoder_switch() -> None:
    """upsampler=lda_aqu adds ``upsample_1`` only; with k_u = 1 at init the model equals the bilinear one."""
    torch.manual_seed(0)
    base = build_model(get_preset("faseg_tiny")).eval()
    lda = build_model(
        get_preset("faseg_tiny", ["pixel_decoder.upsampler=lda_aqu", "pixel_decoder.lda_aqu.kernel_size=1"])
    ).eval()
    missing, unexpected = lda.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("sem_seg_head.pixel_decoder.upsample_1.") for k in missing)
    x = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(0)) * 255  # HRCA needs S0 >= 32
    with torch.no_grad():
        a, b = base(x), lda(x)
    torch.testing.assert_close(b.pred_masks, a.pred_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.pred_logits, a.pred_logits, rtol=1e-4, atol=1e-4)
