"""ImageNet backbone weights -> a preset: torchvision ResNet, official Swin, detectron2 backbone files.

The torchvision state dicts are written out from torchvision's architecture (names and shapes) and checked
against a functional torchvision-style forward, independently of our ResNet code.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from faseg.model import build_model, get_preset
from faseg.model.config import ModelConfig, apply_overrides
from faseg.model.convert import ConversionError, convert, torchvision_resnet_name
from faseg.model.convert.backbones import convert_backbone_state_dict

BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def torchvision_resnet_state(depth: int, seed: int = 0, width: int = 64) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision ResNet's names and shapes (incl. fc and BN counters).

    ``width`` is torchvision's base width (64); a narrower one keeps the structure and names with 1/16 the size.
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=g) * 0.5 + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_var"] = torch.rand(c, generator=g) * 0.5 + 0.75
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inplanes = width
    for layer, blocks in enumerate(BLOCKS[depth], start=1):
        planes = width * 2 ** (layer - 1)
        for j in range(blocks):
            p = f"layer{layer}.{j}"
            stride = 2 if layer > 1 and j == 0 else 1
            if bottleneck:
                conv(f"{p}.conv1", planes, inplanes, 1)
                conv(f"{p}.conv2", planes, planes, 3)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                for n, c in ((1, planes), (2, planes), (3, planes * 4)):
                    bn(f"{p}.bn{n}", c)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn1", planes)
                bn(f"{p}.bn2", planes)
            if stride != 1 or inplanes != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    state["fc.weight"] = torch.randn(1000, inplanes, generator=g) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    return state


def torchvision_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int) -> list[torch.Tensor]:
    """torchvision ResNet's forward written functionally (eval BN): the outputs of layer1..layer4."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t,
            sd[f"{p}.running_mean"],
            sd[f"{p}.running_var"],
            sd[f"{p}.weight"],
            sd[f"{p}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    outs = []
    for layer, blocks in enumerate(BLOCKS[depth], start=1):
        for j in range(blocks):
            p = f"layer{layer}.{j}"
            stride = 2 if layer > 1 and j == 0 else 1
            if depth >= 50:
                out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), f"{p}.bn1"))
                out = F.relu(bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
                out = bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:
                out = F.relu(bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = F.relu(out + x)
        outs.append(x)
    return outs


def r18_full_width() -> ModelConfig:
    return get_preset("faseg_tiny", ["backbone.resnet.stem_out_channels=64", "backbone.resnet.res2_out_channels=64"])


def r50_quarter_width() -> ModelConfig:
    """ResNet-50's structure (bottlenecks, 3-4-6-3) at 1/4 width, FrozenBN like the official configs."""
    return get_preset(
        "faseg_tiny",
        [
            "backbone.resnet.depth=50",
            'backbone.resnet.norm="FrozenBN"',
            "backbone.resnet.stem_out_channels=16",
            "backbone.resnet.res2_out_channels=64",
            "backbone.resnet.width_per_group=16",
        ],
    )


@pytest.mark.parametrize(("depth", "width", "make_cfg"), [(18, 64, r18_full_width), (50, 16, r50_quarter_width)])
def test_torchvision_resnet_matches_torchvision_forward(depth: int, width: int, make_cfg, tmp_path: Path) -> None:
    state = torchvision_resnet_state(depth, width=width)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(state, path)
    conv = convert("torchvision-resnet", path, make_cfg())
    report = conv.report
    assert report.exact
    assert {k for k in report.ignored if k.startswith("fc.")} == {"fc.weight", "fc.bias"}
    assert all(not k.startswith("backbone.") for k in report.fresh)  # the whole head, nothing of the backbone
    assert any(k.startswith("sem_seg_head.predictor.") for k in report.fresh)
    frozen = conv.model.cfg.backbone.resnet.norm == "FrozenBN"
    assert any(k.endswith("num_batches_tracked") for k in report.ignored) == frozen

    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = conv.model.backbone(x)
        ref = torchvision_forward(state, x, depth)
    for name, want in zip(("res2", "res3", "res4", "res5"), ref, strict=True):
        got = ours[name]
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item()), name


def test_torchvision_names_map_one_to_one() -> None:
    state = torchvision_resnet_state(50, width=8)
    mapped = {torchvision_resnet_name(k) for k in state if not k.startswith("fc.")}
    assert None not in mapped
    assert len(mapped) == len(state) - 2
    assert torchvision_resnet_name("layer3.0.downsample.1.running_var") == "backbone.res4.0.shortcut.norm.running_var"
    assert torchvision_resnet_name("layer1.2.bn3.weight") == "backbone.res2.2.conv3.norm.weight"
    assert torchvision_resnet_name("fc.weight") is None


def test_torchvision_errors(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    state = torchvision_resnet_state(18)
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"need a target config"):
        convert("torchvision-resnet", path, None)
    with pytest.raises(ConversionError, match=r"another architecture.*ResNet-18.*ResNet-50"):
        convert("torchvision-resnet", path, get_preset("faseg_r50_ade20k"))
    with pytest.raises(ConversionError, match=r"another architecture.*swin"):
        convert("torchvision-resnet", path, get_preset("faseg_swin_t_ade20k"))
    # The stride check runs before any tensor is compared: names alone are enough.
    r50_names = {
        torchvision_resnet_name(k): torch.zeros(1) for k in torchvision_resnet_state(50, width=8) if "fc." not in k
    }
    with pytest.raises(ConversionError, match=r"stride_in_1x1"):
        convert_backbone_state_dict(
            r50_names,
            get_preset("faseg_r50_ade20k", ["backbone.resnet.stride_in_1x1=true"]),
            source="r50",
            source_format="torchvision-resnet",
        )
    with pytest.raises(ConversionError, match=r"use --from torchvision-resnet"):
        convert("swin", path, r18_full_width())

    del state["layer2.0.bn1.running_var"]
    torch.save(state, path)
    with pytest.raises(
        ConversionError, match=r"missing from the source.*\n.*backbone\.res3\.0\.conv1\.norm\.running_var"
    ):
        convert("torchvision-resnet", path, r18_full_width())
    conv = convert("torchvision-resnet", path, r18_full_width(), allow_partial=True)
    assert conv.report.missing == ["backbone.res3.0.conv1.norm.running_var"]


# ------------------------------------------------------------------ Swin


def swin_cfg() -> ModelConfig:
    return apply_overrides(
        get_preset("faseg_tiny"),
        [
            'backbone.type="swin"',
            "backbone.swin.embed_dim=32",
            "backbone.swin.depths=[2,2,2,2]",
            "backbone.swin.num_heads=[1,2,2,4]",
            "backbone.swin.window_size=3",
        ],
    )


def official_swin_state(
    embed: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A classification checkpoint with microsoft/Swin-Transformer's names (incl. head, final norm, shift masks)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    state["patch_embed.proj.weight"], state["patch_embed.proj.bias"] = rnd(embed, 3, 4, 4), rnd(embed)
    state["patch_embed.norm.weight"], state["patch_embed.norm.bias"] = 1 + rnd(embed), rnd(embed)
    n = window * window
    for s, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        c = embed * 2**s
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            for norm in ("norm1", "norm2"):
                state[p + f"{norm}.weight"], state[p + f"{norm}.bias"] = 1 + rnd(c), rnd(c)
            state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"] = rnd(3 * c, c), rnd(3 * c)
            state[p + "attn.proj.weight"], state[p + "attn.proj.bias"] = rnd(c, c), rnd(c)
            state[p + "attn.relative_position_bias_table"] = rnd((2 * window - 1) ** 2, h)
            coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
            rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
            state[p + "attn.relative_position_index"] = rel[..., 0] * (2 * window - 1) + rel[..., 1]
            state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"] = rnd(4 * c, c), rnd(4 * c)
            state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"] = rnd(c, 4 * c), rnd(c)
            if b % 2:
                state[p + "attn_mask"] = torch.zeros(4, n, n)
        if s < 3:
            state[f"layers.{s}.downsample.reduction.weight"] = rnd(2 * c, 4 * c)
            state[f"layers.{s}.downsample.norm.weight"] = 1 + rnd(4 * c)
            state[f"layers.{s}.downsample.norm.bias"] = rnd(4 * c)
    last = embed * 8
    state["norm.weight"], state["norm.bias"] = 1 + rnd(last), rnd(last)
    state["head.weight"], state["head.bias"] = rnd(1000, last), rnd(1000)
    return state


@pytest.mark.parametrize("fmt", ["pth", "pkl"])
def test_official_swin_loads_into_the_backbone(fmt: str, tmp_path: Path) -> None:
    state = official_swin_state(32, (2, 2, 2, 2), (1, 2, 2, 4), 3)
    path = tmp_path / f"swin.{fmt}"
    if fmt == "pth":
        torch.save({"model": state}, path)
    else:  # Mask2Former's convert-pretrained-swin-model-to-d2.py output
        with path.open("wb") as f:
            pickle.dump(
                {
                    "model": {k: v.numpy() for k, v in state.items()},
                    "__author__": "third_party",
                    "matching_heuristics": True,
                },
                f,
            )
    conv = convert("swin", path, swin_cfg())
    report = conv.report
    assert report.exact
    assert {k for k in report.fresh if k.startswith("backbone.")} == {
        f"backbone.norm{i}.{p}" for i in range(4) for p in ("weight", "bias")
    }
    ignored = set(report.ignored)
    assert {"head.weight", "head.bias", "norm.weight", "norm.bias"} <= ignored
    assert {k for k in ignored if k.endswith("attn_mask")} == {f"layers.{s}.blocks.1.attn_mask" for s in range(4)}
    own = conv.model.state_dict()
    for key, tensor in state.items():
        if f"backbone.{key}" in own:
            assert torch.equal(own[f"backbone.{key}"], tensor), key
    with torch.no_grad():
        feats = conv.model.backbone(torch.randn(1, 3, 64, 96))
    assert feats["res5"].shape == (1, 256, 2, 3)


def test_swin_errors(tmp_path: Path) -> None:
    path = tmp_path / "swin.pth"
    torch.save({"model": official_swin_state(32, (2, 2, 2, 2), (1, 2, 2, 4), 3)}, path)
    with pytest.raises(ConversionError, match=r"window-size mismatch.*window 3.*window 7"):
        convert("swin", path, apply_overrides(swin_cfg(), ["backbone.swin.window_size=7"]))
    with pytest.raises(ConversionError, match=r"another architecture.*depths"):
        convert("swin", path, apply_overrides(swin_cfg(), ["backbone.swin.depths=[2,2,6,2]"]))
    with pytest.raises(ConversionError, match=r"another architecture.*Swin weights.*resnet"):
        convert("swin", path, get_preset("faseg_tiny"))
    with pytest.raises(ConversionError, match=r"use --from swin"):
        convert("torchvision-resnet", path, swin_cfg())
    with pytest.raises(ConversionError, match=r"use --from swin"):
        convert("detectron2", path, swin_cfg())


def test_detectron2_backbone_file_loads_into_the_backbone(tmp_path: Path) -> None:
    """detectron2's ImageNetPretrained/torchvision/R-*.pkl: detectron2 names without the backbone. prefix."""
    cfg = r18_full_width()
    source = build_model(cfg).backbone.state_dict()
    path = tmp_path / "R-18.pkl"
    with path.open("wb") as f:
        pickle.dump(
            {
                "model": {k: v.numpy() for k, v in source.items()},
                "__author__": "Detectron2",
                "matching_heuristics": True,
            },
            f,
        )
    conv = convert("detectron2", path, cfg)
    assert conv.report.exact and conv.report.source_format == "detectron2"
    assert all(not k.startswith("backbone.") for k in conv.report.fresh)
    for key, tensor in source.items():
        assert torch.equal(conv.model.state_dict()[f"backbone.{key}"], tensor), key
