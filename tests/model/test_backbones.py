"""Backbones: output contract, official checkpoint names, parameter counts, freezing, norms, determinism.

Fast CPU tests (small inputs; the large Swin variants are only built on the meta device to count them).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from faseg.model.backbone import (
    Backbone,
    DropPath,
    FrozenBatchNorm2d,
    ResNet,
    ShapeSpec,
    SwinTransformer,
    build_backbone,
    build_resnet,
    build_swin,
)
from faseg.model.backbone.swin import relative_position_index, shifted_window_mask
from faseg.model.config import BackboneConfig, ResNetConfig, SwinConfig
from torch import nn

STAGES = ("res2", "res3", "res4", "res5")
TINY_SWIN = SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.2)
SWIN_PRESETS = {
    "T": SwinConfig(),
    "B": SwinConfig(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, pretrain_img_size=384
    ),
    "L": SwinConfig(
        embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12, pretrain_img_size=384
    ),
}


@pytest.fixture(scope="module")
def r50() -> ResNet:
    torch.manual_seed(0)
    return build_resnet(ResNetConfig()).eval()  # the official ADE20K setting: FrozenBN, freeze_at 0


@pytest.fixture(scope="module")
def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return build_swin(TINY_SWIN).eval()


def _r18(norm: str = "BN", freeze_at: int = 0) -> ResNet:
    return build_resnet(ResNetConfig(depth=18, res2_out_channels=64, norm=norm, freeze_at=freeze_at))


def _numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def _randomise_norm_stats(model: nn.Module) -> None:
    """Give every batch norm non-trivial statistics and affine values (fresh ones are near-identity)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)


# ----------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("hw", [(64, 96), (96, 64)])
@pytest.mark.parametrize(("depth", "channels"), [(50, (256, 512, 1024, 2048)), (18, (64, 128, 256, 512))])
def test_resnet_output_contract(depth, channels, hw, r50):
    model = r50 if depth == 50 else _r18().eval()
    expected = {name: ShapeSpec(c, 4 * 2**i) for i, (name, c) in enumerate(zip(STAGES, channels))}
    assert isinstance(model, Backbone)
    assert model.output_shape() == expected
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert list(out) == list(STAGES)
    for name, spec in expected.items():
        assert out[name].shape == (2, spec.channels, hw[0] // spec.stride, hw[1] // spec.stride)


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (100, 70)])
def test_swin_output_contract(hw, tiny_swin):
    # 64×96 gives a 16×24 res2 map: not a multiple of the window (7), so every block pads; 100×70 also needs
    # patch padding (70 = 4·17 + 2) and odd sizes in PatchMerging.
    assert isinstance(tiny_swin, Backbone)
    assert tiny_swin.output_shape() == {name: ShapeSpec(32 * 2**i, 4 * 2**i) for i, name in enumerate(STAGES)}
    with torch.no_grad():
        out = tiny_swin(torch.randn(2, 3, *hw))
    assert list(out) == list(STAGES)
    h, w = math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)
    for i, name in enumerate(STAGES):
        assert out[name].shape == (2, 32 * 2**i, h, w)
        assert torch.isfinite(out[name]).all()
        h, w = math.ceil(h / 2), math.ceil(w / 2)


def test_swin_patch_padding_equals_explicit_zero_padding(tiny_swin):
    x = torch.randn(1, 3, 62, 94)  # not a multiple of the patch size
    with torch.no_grad():
        implicit = tiny_swin(x)
        explicit = tiny_swin(F.pad(x, (0, 2, 0, 2)))  # bottom/right zeros to 64×96
    for name in STAGES:
        torch.testing.assert_close(implicit[name], explicit[name])


def test_build_backbone_dispatch():
    assert isinstance(build_backbone(BackboneConfig(type="swin", swin=TINY_SWIN)), SwinTransformer)
    r18 = build_backbone(BackboneConfig(resnet=ResNetConfig(depth=18, res2_out_channels=64)))
    assert isinstance(r18, ResNet)
    # narrower basic-block ResNets (faseg_tiny) keep the same names and strides
    narrow = build_backbone(BackboneConfig(resnet=ResNetConfig(depth=18, stem_out_channels=32, res2_out_channels=32)))
    assert [s.channels for s in narrow.output_shape().values()] == [32, 64, 128, 256]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (ResNetConfig(depth=26), "depth"),
        (ResNetConfig(norm="GN"), "norm"),  # type: ignore[arg-type]
        (ResNetConfig(freeze_at=6), "freeze_at"),
    ],
)
def test_resnet_config_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_resnet(cfg)


# ------------------------------------------------------------------------------------ checkpoint names


def _detectron2_r50_keys(norm_keys: tuple[str, ...]) -> set[str]:
    """The detectron2 R50 state-dict names (spec §5.2), generated from the naming rule."""
    convs = ["stem.conv1"]
    for stage, blocks in zip(STAGES, (3, 4, 6, 3)):
        convs.append(f"{stage}.0.shortcut")
        convs += [f"{stage}.{j}.conv{n}" for j in range(blocks) for n in (1, 2, 3)]
    keys = {f"{c}.weight" for c in convs}
    keys |= {f"{c}.norm.{k}" for c in convs for k in norm_keys}
    return keys


def test_r50_state_dict_has_exactly_detectron2_names(r50):
    state = r50.state_dict()
    frozen_bn = ("weight", "bias", "running_mean", "running_var")
    assert set(state) == _detectron2_r50_keys(frozen_bn)
    assert len(state) == 53 * 5  # 53 convs (1 stem + 16 blocks·3 + 4 shortcuts), each weight + 4 norm buffers
    assert state["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert state["res2.0.shortcut.weight"].shape == (256, 64, 1, 1)
    assert state["res5.2.conv3.norm.running_var"].shape == (2048,)
    # stride_in_1x1=False: res3.0 strides in its 3×3 conv
    assert r50.res3[0].conv1.stride == (1, 1) and r50.res3[0].conv2.stride == (2, 2)
    assert all(m.bias is None for m in r50.modules() if isinstance(m, nn.Conv2d))

    bn = build_resnet(ResNetConfig(norm="BN"))
    assert set(bn.state_dict()) == _detectron2_r50_keys((*frozen_bn, "num_batches_tracked"))


def test_r18_names_follow_detectron2_shortcut_rule():
    keys = set(_r18().state_dict())
    # detectron2 adds a shortcut only where the channel count changes: not in res2 (64 -> 64) of R18/R34.
    assert not any(k.startswith("res2.0.shortcut") for k in keys)
    assert {"res3.0.shortcut.weight", "res4.0.shortcut.weight", "res5.0.shortcut.weight"} <= keys
    assert "res5.1.conv2.norm.running_mean" in keys and "res5.1.conv3.weight" not in keys


def _official_swin_keys(cfg: SwinConfig) -> set[str]:
    """Mask2Former D2SwinTransformer names (spec §5.2), generated from the naming rule."""
    wb = ("weight", "bias")
    keys = {f"patch_embed.{m}.{p}" for m in ("proj", "norm") for p in wb}
    for s, depth in enumerate(cfg.depths):
        for b in range(depth):
            pre = f"layers.{s}.blocks.{b}."
            keys |= {pre + f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2") for p in wb}
            keys |= {pre + f"mlp.{m}.{p}" for m in ("fc1", "fc2") for p in wb}
            keys |= {pre + "attn.relative_position_bias_table", pre + "attn.relative_position_index"}
        if s < 3:
            keys |= {f"layers.{s}.downsample.reduction.weight"}
            keys |= {f"layers.{s}.downsample.norm.{p}" for p in wb}
        keys |= {f"norm{s}.{p}" for p in wb}
    return keys


def test_swin_state_dict_has_exactly_official_names(tiny_swin):
    assert set(tiny_swin.state_dict()) == _official_swin_keys(TINY_SWIN)
    with_ape = build_swin(SwinConfig(**{**TINY_SWIN.__dict__, "ape": True}))
    assert set(with_ape.state_dict()) == _official_swin_keys(TINY_SWIN) | {"absolute_pos_embed"}
    assert with_ape.absolute_pos_embed.shape == (1, 32, 56, 56)  # pretrain 224 / patch 4


def test_swin_relative_position_index_is_a_persistent_buffer_that_loads(tiny_swin):
    # Official checkpoints contain the index: a strict load of a full state dict must accept it.
    other = build_swin(TINY_SWIN).eval()
    other.load_state_dict(tiny_swin.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_swin(x), other(x)
    for name in STAGES:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_relative_position_index_values():
    ws = 3
    index = relative_position_index(ws)
    coords = [(i, j) for i in range(ws) for j in range(ws)]
    for p, (yi, xi) in enumerate(coords):
        for q, (yj, xj) in enumerate(coords):
            assert index[p, q] == (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    assert index.dtype == torch.int64 and int(index.max()) == (2 * ws - 1) ** 2 - 1


def test_shifted_window_mask_blocks_only_pairs_from_different_regions():
    ws, shift = 4, 2
    mask = shifted_window_mask(8, 4, ws, shift, torch.device("cpu"), torch.float32)  # 2 windows of 16 tokens
    assert mask.shape == (2, 16, 16)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    # The first window (rows 0..3 of the shifted map) only splits along the columns (2 | 2).
    col = torch.arange(16) % ws
    same_side = (col[:, None] < ws - shift) == (col[None, :] < ws - shift)
    assert torch.equal(mask[0] == 0, same_side)
    # The last window also splits along the rows, so it holds four regions.
    assert (mask[1] == 0).sum() == 4 * 4 * 4


# ------------------------------------------------------------------------------------ parameter counts


def test_r50_parameter_counts(r50):
    """``parameters()`` of a FrozenBN R50 are the conv weights only; the BN tensors are buffers.

    torchvision's resnet50 has 25,557,032 parameters; without fc (2048·1000 + 1000) that is 23,508,032,
    of which 53,120 are BN affine weights (53 BNs, 26,560 channels). A FrozenBN R50 therefore has
    23,454,912 parameters and 4 · 26,560 = 106,240 buffer elements; with BN all 23,508,032 are parameters.
    """
    assert _numel(r50.parameters()) == 23_454_912
    assert _numel(r50.buffers()) == 4 * 26_560
    assert all(p.requires_grad for p in r50.parameters())  # freeze_at 0

    bn = build_resnet(ResNetConfig(norm="BN"))
    assert _numel(bn.parameters()) == 23_508_032 == 23_454_912 + 2 * 26_560
    assert _numel(bn.buffers()) == 2 * 26_560 + 53  # running stats + one num_batches_tracked per BN


def _swin_param_count(cfg: SwinConfig) -> int:
    """Analytic parameter count of the D2 Swin backbone (with norm0..norm3, without a classifier)."""
    c0, p = cfg.embed_dim, cfg.patch_size
    n = 3 * p * p * c0 + c0 + (2 * c0 if cfg.patch_norm else 0)  # patch_embed.proj + .norm
    for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
        c = c0 * 2**s
        hidden = int(c * cfg.mlp_ratio)
        qkv = 3 * c * c + (3 * c if cfg.qkv_bias else 0)
        block = 2 * c + qkv + c * c + c + (2 * cfg.window_size - 1) ** 2 * heads + 2 * c
        block += c * hidden + hidden + hidden * c + c
        n += depth * block
        if s < 3:
            n += 2 * 4 * c + 4 * c * 2 * c  # PatchMerging norm + reduction (no bias)
        n += 2 * c  # norm{s}
    return n


@pytest.mark.parametrize("variant", ["T", "B", "L"])
def test_swin_parameter_counts(variant):
    cfg = SWIN_PRESETS[variant]
    with torch.device("meta"):  # no memory, no init cost
        model = build_swin(cfg)
    assert _numel(model.parameters()) == _swin_param_count(cfg)
    assert _numel(model.buffers()) == sum(cfg.depths) * cfg.window_size**4  # relative_position_index


def test_swin_t_parameter_count_matches_official():
    # Official Swin-T classifier: 28,288,354 parameters = backbone + final norm (2·768) + head (768·1001).
    # The D2 backbone drops those two and adds norm0..norm3 (2·(96+192+384+768) = 2,880).
    assert _swin_param_count(SWIN_PRESETS["T"]) == 28_288_354 - 1_536 - 769_000 + 2_880 == 27_520_698


# --------------------------------------------------------------------------------- norms and freezing


def test_frozen_bn_equals_eval_batchnorm():
    bn = nn.BatchNorm2d(8).eval()
    _randomise_norm_stats(bn)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(frozen(x), bn(x))
    x.requires_grad_(True)  # training path (affine form)
    y = frozen(x)
    torch.testing.assert_close(y, bn(x))
    y.sum().backward()
    assert x.grad is not None


def test_fresh_frozen_bn_is_identity_and_has_no_num_batches_tracked():
    frozen = FrozenBatchNorm2d(4)
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(frozen(x), x)
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    # As in detectron2, a BatchNorm checkpoint's counter is an unexpected key, reported, not swallowed.
    result = frozen.load_state_dict(nn.BatchNorm2d(4).state_dict(), strict=False)
    assert result.unexpected_keys == ["num_batches_tracked"] and result.missing_keys == []


_R18_BN_KEYS = set(_r18(norm="BN").state_dict())


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freeze_at(freeze_at):
    torch.manual_seed(0)
    model = _r18(norm="BN").eval()
    _randomise_norm_stats(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    model.freeze(freeze_at)
    groups = ["stem", *STAGES]
    for k, group in enumerate(groups, start=1):
        frozen = k <= freeze_at
        module = getattr(model, group)
        assert all(p.requires_grad != frozen for p in module.parameters()), group
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d | FrozenBatchNorm2d)]
        assert all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms), group
    # Converted norms keep their statistics (and detectron2's key set, incl. num_batches_tracked).
    assert set(model.state_dict()) == _R18_BN_KEYS
    with torch.no_grad():
        after = model(x)
    for name in STAGES:
        torch.testing.assert_close(after[name], before[name])


def test_syncbn_runs_on_cpu_in_training_and_eval():
    model = _r18(norm="SyncBN")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)  # no process group: plain batch statistics
    sum(o.mean() for o in out.values()).backward()
    assert model.stem.conv1.norm.num_batches_tracked.item() == 1
    with torch.no_grad():
        assert model.eval()(x)["res5"].shape == (2, 512, 2, 2)


# --------------------------------------------------------------------------- gradients, determinism


def _assert_every_trainable_parameter_gets_a_gradient(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x)
    sum(o.square().mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_backward_reaches_every_trainable_parameter_resnet(r50):
    _assert_every_trainable_parameter_gets_a_gradient(r50, torch.randn(1, 3, 64, 64))
    r50.zero_grad(set_to_none=True)
    _assert_every_trainable_parameter_gets_a_gradient(
        _r18(norm="BN", freeze_at=2).train(), torch.randn(2, 3, 64, 64)
    )


def test_backward_reaches_every_trainable_parameter_swin():
    torch.manual_seed(0)
    model = build_swin(SwinConfig(**{**TINY_SWIN.__dict__, "ape": True})).train()
    _assert_every_trainable_parameter_gets_a_gradient(model, torch.randn(2, 3, 64, 96))


@pytest.mark.parametrize("name", ["r50", "tiny_swin"])
def test_eval_forward_is_deterministic(name, request):
    model = request.getfixturevalue(name)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = model(x), model(x)
    for key in STAGES:
        assert torch.equal(a[key], b[key])


def test_drop_path():
    x = torch.randn(1000, 3, 4)
    layer = DropPath(0.25)
    assert torch.equal(layer.eval()(x), x)
    y = layer.train()(x)
    kept = (y != 0).flatten(1).all(dim=1)
    dropped = (y == 0).flatten(1).all(dim=1)
    assert torch.all(kept | dropped)  # whole samples are dropped
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.15 < dropped.float().mean().item() < 0.35
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_swin_drop_path_rates_increase_linearly(tiny_swin):
    rates = [blk.drop_path.drop_prob for layer in tiny_swin.layers for blk in layer.blocks]
    expected = torch.linspace(0, TINY_SWIN.drop_path_rate, sum(TINY_SWIN.depths)).tolist()
    assert rates == pytest.approx(expected)
    assert [blk.shift_size for blk in tiny_swin.layers[2].blocks] == [0, 3]  # odd blocks shift by ws // 2


def test_swin_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = SwinTransformer(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)
    ckpt = SwinTransformer(
        embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), drop_path_rate=0.0, use_checkpoint=True
    )
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for model in (plain, ckpt):
        sum(o.square().mean() for o in model.train()(x).values()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
