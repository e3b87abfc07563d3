"""Typed model configuration: one dataclass per component, serialisable to JSON.

A preset (``faseg.model.presets``) is just a ``ModelConfig`` value. Every field can be overridden with a
dotted key (``apply_overrides(cfg, ["decoder.num_queries=50"])``); the same ``--set k=v`` syntax is used by
every CLI subcommand. Field comments give the official value and where it comes from
(``F:`` = the official ziplab/FASeg code, ``M:`` = the official Mask2Former code).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

NormName = Literal["FrozenBN", "BN", "SyncBN"]
KeyPE = Literal["sine", "learnable", "conditional"]
PositionalQueries = Literal["learnable", "grid_anchor", "dynamic_anchor", "dynamic_foreground", "dfpq"]
HRCAMode = Literal["off", "window", "bilinear"]
PoolRegion = Literal["complement", "foreground"]
Upsampler = Literal["bilinear", "lda_aqu"]


@dataclass
class ResNetConfig:
    depth: int = 50  # 18 / 34 (basic blocks) or 50 / 101 (bottlenecks)
    norm: NormName = "FrozenBN"  # detectron2 default; Cityscapes configs use SyncBN (spec §1.2)
    stem_out_channels: int = 64
    res2_out_channels: int = 256  # 64 for depth 18 / 34
    width_per_group: int = 64
    num_groups: int = 1
    stride_in_1x1: bool = False  # torchvision-style: stride on the 3×3 conv (spec §1.2)
    freeze_at: int = 0  # 0 = every stage trainable (the official ADE20K config)


@dataclass
class SwinConfig:
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.3
    patch_size: int = 4
    ape: bool = False  # absolute position embedding (off in every official config)
    patch_norm: bool = True
    pretrain_img_size: int = 224


@dataclass
class BackboneConfig:
    type: Literal["resnet", "swin"] = "resnet"
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)


@dataclass
class FocusConfig:
    """Focus-DETR-style sparse deformable encoder (docs/focus_lda.md; off in every preset).

    Each encoder layer updates only the top ``keep_ratio × cascade[layer]`` share of every level's tokens,
    ranked by a top-down token-scoring head; the others pass through unchanged. ``fine_ratio`` of the tokens a
    layer updates also get a self-attention among themselves first ("dual attention").
    """

    enabled: bool = False
    keep_ratio: float = 0.5  # ρ: share of each level's tokens updated by the first layer (Focus-DETR: 0.5)
    # Per-layer multipliers of keep_ratio; the last one repeats for deeper encoders. Focus-DETR's schedule.
    cascade: tuple[float, ...] = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)
    fine_ratio: float = 0.2  # share of a layer's updated tokens that also get dual attention; 0 = none
    # Loss targets (faseg.model.focus.focus_targets): a token is informative when it lies within
    # boundary_radius tokens of a class boundary or covers part of a segment smaller than small_segment_area
    # (share of the image's labelled pixels).
    boundary_radius: int = 1
    small_segment_area: float = 0.02
    loss_weight: float = 1.0  # weight of loss_focus and loss_focus_sem (faseg.model.focus.focus_weight_dict)


@dataclass
class LDAAQUConfig:
    """LDA-AQU upsampler knobs (Du et al., MM 2024; defaults: the official FPN_LAU config, docs/focus_lda.md)."""

    kernel_size: int = 3  # k_u: the k_u × k_u neighbourhood each output pixel attends to
    encoder_kernel: int = 3  # k_e: kernel of the offset generator's last conv
    offset_range: float = 11.0  # offsets = offset_range · tanh(·), in output-pixel units
    reduction: int = 4  # query/key channels = channels // reduction
    groups: int = 2  # offset groups (each group of channels samples at its own offsets)
    heads: int = 1


@dataclass
class PixelDecoderConfig:
    # The number of levels handed to the transformer decoder follows decoder.hrca: 3 (1/32, 1/16, 1/8) when
    # HRCA is off (Mask2Former's MSDeformAttnPixelDecoder), 4 with the 1/4 FPN map and a res2 PE when it is on
    # (FASeg's MSDeformAttnPixelDecoder4ScalesFASeg).
    # K_p, the key positional encoding shared by the encoder and the decoder keys (paper Table 3).
    # The official FASeg code uses "conditional" (3×3 depthwise PEG); Mask2Former uses "sine".
    key_pe: KeyPE = "conditional"
    # "learnable" K_p: one table per level at this input size, bilinearly resized to the actual size.
    learnable_pe_input_size: int = 512
    conv_dim: int = 256
    mask_dim: int = 256
    norm: Literal["GN", ""] = "GN"
    encoder_layers: int = 6
    encoder_heads: int = 8  # taken from MASK_FORMER.NHEADS in the official code
    encoder_ffn_dim: int = 1024  # hard-coded in M: msdeformattn.py:307
    encoder_points: int = 4  # constructor default; the config key is never read (spec §1.3)
    encoder_dropout: float = 0.0
    in_features: tuple[str, ...] = ("res3", "res4", "res5")  # levels fed to the deformable encoder
    common_stride: int = 4
    focus: FocusConfig = field(default_factory=FocusConfig)
    # Feature upsampling of the FPN step(s) (1/8 → 1/4): the official bilinear, or LDA-AQU.
    upsampler: Upsampler = "bilinear"
    lda_aqu: LDAAQUConfig = field(default_factory=LDAAQUConfig)


@dataclass
class DecoderConfig:
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    # Number of decoder *layers*. The official configs write DEC_LAYERS = layers + 1
    # (one extra "layer" for the loss on the learnable queries): FASeg 14 → 13, Mask2Former 10 → 9.
    dec_layers: int = 13
    pre_norm: bool = False  # both official configs are post-norm
    dropout: float = 0.0
    mask_threshold: float = 0.15  # masked-attention threshold: FASeg 0.15, Mask2Former 0.5 (spec §2.1)
    positional_queries: PositionalQueries = "dfpq"
    # First-layer pooled PE (DFPQ). The official code pools where prob < 0.5, i.e. over the *complement* of
    # the predicted mask (F: mask2former_transformer_decoder.py:615). The released weights were trained with
    # it, so "complement" is the default; "foreground" is the paper's reading (prob >= threshold).
    pool_threshold: float = 0.5
    pool_region: PoolRegion = "complement"
    hrca: HRCAMode = "window"
    hrca_topk_divisor: int = 32  # omega_rate: k = S_(1/32) // 32 windows (spec §2.4)
    # Grid of anchor points for positional_queries="grid_anchor" is derived from num_queries (nearest
    # rectangle); nothing to configure.


@dataclass
class ModelConfig:
    name: str = "faseg_r50_ade20k"
    num_classes: int = 150
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # RGB, 0–255 scale (spec §1.1)
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)
    size_divisibility: int = 32
    default_input_size: tuple[int, int] = (512, 512)  # H, W

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, prefix="")

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"config key {prefix}{name} must be an object")
            kwargs[name] = _from_dict(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(hint, value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` and convert lists to tuples."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"config key {key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item_hint = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"config key {key} must have {len(args)} items, got {len(value)}")
            return tuple(_coerce(h, v, key) for h, v in zip(args, value))
        return tuple(_coerce(item_hint, v, key) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key} must be a string, got {value!r}")
        return value
    return value


def _parse_value(text: str) -> Any:
    """Parse the right-hand side of ``key=value``: JSON when it parses, else a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: ModelConfig, overrides: list[str] | tuple[str, ...]) -> ModelConfig:
    """Return a copy of ``cfg`` with ``key=value`` overrides applied (dotted keys, JSON values).

    >>> apply_overrides(ModelConfig(), ["decoder.num_queries=50"]).decoder.num_queries
    50
    """
    data = cfg.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. decoder.num_queries=50)")
        key, _, raw = item.partition("=")
        parts = key.strip().split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise ValueError(f"unknown config key: {'.'.join(parts[: depth + 1])}")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key: {key.strip()}")
        node[parts[-1]] = _parse_value(raw.strip())
    return ModelConfig.from_dict(data)
