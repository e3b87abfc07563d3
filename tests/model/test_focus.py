"""Focus-style sparse encoder: selection, pass-through, targets, loss, gradients, MACs (faseg.model.focus)."""

from __future__ import annotations

import math

import pytest
import torch
from faseg.model import build_model, get_preset
from faseg.model.complexity import count_macs
from faseg.model.config import FocusConfig, PixelDecoderConfig
from faseg.model.criterion import semantic_targets
from faseg.model.deformable_encoder import MSDeformAttnTransformerEncoderOnly
from faseg.model.focus import (
    FocusMSDeformAttnEncoder,
    focus_loss,
    focus_targets,
    focus_weight_dict,
    layer_keep_ratios,
    rank_tokens,
    tokens_to_keep,
)
from torch import nn

SHAPES = [(2, 3), (4, 6), (8, 12)]  # low resolution first, like the pixel decoder's encoder


def _cfg(**focus: object) -> PixelDecoderConfig:
    return PixelDecoderConfig(
        conv_dim=32,
        encoder_layers=3,
        encoder_heads=4,
        encoder_ffn_dim=64,
        focus=FocusConfig(enabled=True, **focus),  # type: ignore[arg-type]
    )


def _inputs(b: int = 2, c: int = 32, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    srcs = [torch.randn(b, c, h, w, generator=g) for h, w in SHAPES]
    pos = [torch.randn(b, c, h, w, generator=g) for h, w in SHAPES]
    return srcs, pos


def _perturb(module: nn.Module) -> None:
    """Move the zero-initialised deformable-attention projections off zero (see test_model._perturb_zero_init)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight", "conv_offset.3.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 1e-2)


def _encoder(**focus: object) -> FocusMSDeformAttnEncoder:
    torch.manual_seed(0)
    enc = FocusMSDeformAttnEncoder(_cfg(**focus), n_levels=len(SHAPES)).eval()
    _perturb(enc)
    return enc


class _FixedScores(nn.Module):
    """Stands in for the scorer: returns given per-level scores."""

    def __init__(self, scores: list[torch.Tensor]) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, feats: object, spatial_shapes: object) -> list[torch.Tensor]:
        return self.scores


def test_keep_counts_and_cascade() -> None:
    assert tokens_to_keep(0.3, 10) == 3  # not 4: 0.3·10 is rounded before the ceiling
    assert tokens_to_keep(0.3, 256) == 77
    assert tokens_to_keep(1e-6, 16) == 1 and tokens_to_keep(1.0, 16) == 16
    cfg = FocusConfig(keep_ratio=0.5, cascade=(1.0, 0.5))
    assert layer_keep_ratios(cfg, 4) == [0.5, 0.25, 0.25, 0.25]  # the last multiplier repeats
    assert layer_keep_ratios(FocusConfig(keep_ratio=0.3, cascade=()), 2) == [0.3, 0.3]


def test_rank_tokens_is_topk_per_level() -> None:
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, sum(h * w for h, w in SHAPES), generator=g)
    counts = [3, 10, 40]
    ranked = rank_tokens(scores, SHAPES, counts)
    start = 0
    for (h, w), k, idx in zip(SHAPES, counts, ranked):
        level = scores[:, start : start + h * w]
        expected = torch.sort(level, dim=1, descending=True).indices[:, :k] + start
        assert torch.equal(idx, expected)
        start += h * w


def test_unselected_tokens_pass_through_unchanged() -> None:
    enc = _encoder(keep_ratio=0.4, cascade=(1.0, 0.7, 0.5))
    srcs, pos = _inputs()
    src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, C)
    with torch.no_grad():
        out, focus = enc(srcs, pos)
    sizes = [h * w for h, w in SHAPES]
    # cascaded: fixed k per layer and level, each layer's set inside the previous one's
    for i, idx in enumerate(focus.indices):
        assert idx.shape == (2, sum(tokens_to_keep(enc.keep_ratios[i], n) for n in sizes))
        if i:
            for b in range(2):
                assert set(idx[b].tolist()) <= set(focus.indices[i - 1][b].tolist())
    for b in range(2):
        selected = torch.zeros(src_flat.shape[1], dtype=torch.bool)
        selected[focus.indices[0][b]] = True
        assert torch.equal(out[b, ~selected], src_flat[b, ~selected])  # bit-identical
        assert (out[b, selected] - src_flat[b, selected]).abs().amax(-1).min() > 0  # every selected one changed


def test_selection_follows_the_scores() -> None:
    enc = _encoder(keep_ratio=0.25, cascade=(1.0, 0.5), fine_ratio=0.3)
    g = torch.Generator().manual_seed(7)
    fixed = [torch.randn(2, h * w, generator=g) for h, w in SHAPES]
    enc.focus.scorer = _FixedScores(fixed)
    srcs, pos = _inputs()
    src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    with torch.no_grad():
        out, focus = enc(srcs, pos)
    assert torch.equal(focus.scores, torch.cat(fixed, 1))
    for i, idx in enumerate(focus.indices):
        expected, start = [], 0
        for (h, w), s in zip(SHAPES, fixed):
            k = tokens_to_keep(enc.keep_ratios[i], h * w)
            expected.append(s.topk(k, dim=1).indices + start)
            start += h * w
        for b in range(2):
            assert set(idx[b].tolist()) == set(torch.cat(expected, 1)[b].tolist())
    changed = (out != src_flat).any(-1)  # (B, S)
    for b in range(2):
        assert set(changed[b].nonzero().flatten().tolist()) == set(focus.indices[0][b].tolist())
    # dual attention: the top fine_ratio of each layer's tokens by σ(score)·σ(semantic score)
    for idx, sem, fine in zip(focus.indices, focus.semantic_scores, focus.fine_indices):
        assert fine.shape[1] == tokens_to_keep(0.3, idx.shape[1])
        combined = torch.gather(focus.scores, 1, idx).sigmoid() * sem.sigmoid()
        assert torch.equal(fine, combined.topk(fine.shape[1], dim=1).indices)


def test_keep_all_without_dual_attention_equals_dense_encoder() -> None:
    """keep_ratio 1 and no dual attention: every layer updates every token (in score order) → the dense encoder."""
    enc = _encoder(keep_ratio=1.0, cascade=(1.0,), fine_ratio=0.0)
    dense = MSDeformAttnTransformerEncoderOnly(_cfg(), n_levels=len(SHAPES)).eval()
    missing, unexpected = dense.load_state_dict(enc.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("focus.") for k in unexpected)
    srcs, pos = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(enc(srcs, pos)[0], dense(srcs, pos)[0], rtol=1e-5, atol=1e-5)


def test_dense_checkpoint_loads_with_only_focus_keys_missing() -> None:
    torch.manual_seed(0)
    base = build_model(get_preset("faseg_tiny"))
    focus = build_model(get_preset("faseg_tiny", ["pixel_decoder.focus.enabled=true"]))
    missing, unexpected = focus.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == []
    assert missing and all(k.startswith("sem_seg_head.pixel_decoder.transformer.focus.") for k in missing)


def test_focus_targets_boundaries_small_segments_and_ignore() -> None:
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 32:] = 1  # vertical class boundary at x = 32
    label[0:4, 0:4] = 2  # 16 px of 4096: a small segment (< 2 %)
    label[56:, 56:] = 255  # ignore
    target = semantic_targets(label)
    shapes = [(8, 8)]  # stride 8
    informative, small, valid = focus_targets([target], shapes, boundary_radius=1, small_segment_area=0.02)
    inf, sml, val = (t.view(8, 8) for t in (informative[0], small[0], valid[0]))
    assert not val[7, 7] and val[7, 6] and val.sum() == 63  # the all-ignore patch is excluded
    assert sml[0, 0] and sml.sum() == 1
    # boundary between token columns 3 and 4: radius 1 marks columns 3 and 4; token (0, 0) is small;
    # token (0, 1) is next to the small segment's patch (two classes within 1 token)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:, 3:5] = True
    expected[0:2, 0:2] = True
    assert torch.equal(inf.bool(), expected)
    radius0, _, _ = focus_targets([target], shapes, boundary_radius=0, small_segment_area=0.0)
    assert radius0.sum() == 1  # only the patch that itself holds two classes (the small square's)


def test_focus_loss_trains_every_new_parameter() -> None:
    torch.manual_seed(0)
    # 5 decoder layers so one HRCA layer runs; 128×256 gives HRCA k = 32 // 32 = 1 window
    cfg = get_preset("faseg_tiny", ["pixel_decoder.focus.enabled=true", "decoder.dec_layers=5"])
    model = build_model(cfg).train()
    _perturb(model)
    x = torch.rand(2, 3, 128, 256, generator=torch.Generator().manual_seed(0)) * 255
    labels = torch.randint(0, cfg.num_classes, (2, 4, 8)).repeat_interleave(32, 1).repeat_interleave(32, 2)
    labels[0, :8, :8] = 7  # a small segment
    targets = [semantic_targets(lbl) for lbl in labels]
    out = model(x)
    focus = out.focus
    assert focus is not None
    losses = focus_loss(focus, targets)
    assert set(losses) == set(focus_weight_dict(cfg.pixel_decoder.focus)) == {"loss_focus", "loss_focus_sem"}
    assert all(torch.isfinite(v) for v in losses.values())
    main = out.pred_masks.mean() + out.pred_logits.mean() + sum(a["pred_masks"].mean() for a in out.aux_outputs)
    (main + sum(losses.values())).backward()
    frozen = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert frozen == []


def test_focus_off_builds_the_dense_encoder() -> None:
    model = build_model(get_preset("faseg_tiny"))
    assert type(model.sem_seg_head.pixel_decoder.transformer) is MSDeformAttnTransformerEncoderOnly
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 128, 256)).focus is None
    assert focus_weight_dict(FocusConfig()) == {}


@pytest.mark.parametrize(
    "override",
    ["keep_ratio=0", "keep_ratio=1.5", "cascade=[1.0,-0.5]", "cascade=[3.0]", "fine_ratio=1.2", "boundary_radius=-1"],
)
def test_invalid_focus_config_raises(override: str) -> None:
    cfg = get_preset("faseg_tiny", ["pixel_decoder.focus.enabled=true", f"pixel_decoder.focus.{override}"])
    with pytest.raises(ValueError, match=r"pixel_decoder\.focus"):
        build_model(cfg)


def test_focus_halves_the_deformable_encoder_macs_at_tiny_width() -> None:
    """The acceptance number is for faseg_r50_ade20k at 512² (docs/focus_lda.md, `faseg info`); here the tiny
    preset's encoder on its 256² token grid is the fast stand-in: keep ratio 0.3 without cascade, with the
    scorer and the dual attention counted."""
    cfg = get_preset("faseg_tiny").pixel_decoder
    focus_cfg = get_preset(
        "faseg_tiny", ["pixel_decoder.focus.keep_ratio=0.3", "pixel_decoder.focus.cascade=[1.0]"]
    ).pixel_decoder
    focus_cfg.focus.enabled = True
    g = torch.Generator().manual_seed(0)
    srcs = [torch.randn(1, cfg.conv_dim, s, s, generator=g) for s in (8, 16, 32)]
    pos = [torch.randn(1, cfg.conv_dim, s, s, generator=g) for s in (8, 16, 32)]
    dense = count_macs(MSDeformAttnTransformerEncoderOnly(cfg, 3).eval(), (srcs, pos)).total
    sparse = count_macs(FocusMSDeformAttnEncoder(focus_cfg, 3).eval(), (srcs, pos)).total
    assert sparse < 0.5 * dense
    assert math.isclose(sparse / dense, 0.4, abs_tol=0.1)
