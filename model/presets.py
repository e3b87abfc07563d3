"""Presets: named :class:`ModelConfig` values.

A plain dict keyed by the builder's own name; registering a name twice raises. Values are from the official
configs (spec §1–§3, §5): ``F:configs/ade20k/semantic-segmentation/faseg_r50.yaml`` and its Swin / Cityscapes
siblings, ``M:configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import (
    BackboneConfig,
    DecoderConfig,
    ModelConfig,
    PixelDecoderConfig,
    ResNetConfig,
    SwinConfig,
    apply_overrides,
)

ADE20K_CLASSES = 150
CITYSCAPES_CLASSES = 19

_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def register_preset(fn: Callable[[], ModelConfig]) -> Callable[[], ModelConfig]:
    if fn.__name__ in _PRESETS:
        raise ValueError(f"preset {fn.__name__!r} is registered twice")
    _PRESETS[fn.__name__] = fn
    return fn


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str, overrides: list[str] | tuple[str, ...] = ()) -> ModelConfig:
    """The config of preset ``name`` with ``key=value`` overrides applied."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return apply_overrides(_PRESETS[name](), list(overrides))


def _swin(
    embed_dim: int, depths: tuple[int, ...], heads: tuple[int, ...], window: int, pretrain: int
) -> BackboneConfig:
    return BackboneConfig(
        type="swin",
        swin=SwinConfig(
            embed_dim=embed_dim, depths=depths, num_heads=heads, window_size=window, pretrain_img_size=pretrain
        ),
    )


@register_preset
def mask2former_r50_ade20k() -> ModelConfig:
    """Mask2Former R50, ADE20K 512 (DEC_LAYERS 10 → 9 layers, threshold 0.5, sine PE, learnable queries)."""
    return ModelConfig(
        name="mask2former_r50_ade20k",
        num_classes=ADE20K_CLASSES,
        pixel_decoder=PixelDecoderConfig(key_pe="sine"),
        decoder=DecoderConfig(dec_layers=9, mask_threshold=0.5, positional_queries="learnable", hrca="off"),
    )


@register_preset
def faseg_r50_ade20k() -> ModelConfig:
    """FASeg R50, ADE20K 512 (DEC_LAYERS 14 → 13 layers, DFPQ, HRCA every 4th layer, threshold 0.15)."""
    return ModelConfig(name="faseg_r50_ade20k", num_classes=ADE20K_CLASSES)


@register_preset
def faseg_swin_t_ade20k() -> ModelConfig:
    """FASeg Swin-T (IN-1k, window 7), ADE20K 512."""
    return ModelConfig(
        name="faseg_swin_t_ade20k", num_classes=ADE20K_CLASSES, backbone=_swin(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224)
    )


@register_preset
def faseg_swin_b_ade20k() -> ModelConfig:
    """FASeg Swin-B (IN-21k, window 12, 384 pretraining), ADE20K 640."""
    return ModelConfig(
        name="faseg_swin_b_ade20k",
        num_classes=ADE20K_CLASSES,
        backbone=_swin(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
        default_input_size=(640, 640),
    )


@register_preset
def faseg_swin_l_ade20k() -> ModelConfig:
    """FASeg Swin-L (IN-21k, window 12, 384 pretraining), ADE20K 640."""
    return ModelConfig(
        name="faseg_swin_l_ade20k",
        num_classes=ADE20K_CLASSES,
        backbone=_swin(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
        default_input_size=(640, 640),
    )


@register_preset
def faseg_r50_cityscapes() -> ModelConfig:
    """FASeg R50, Cityscapes (19 classes, SyncBN backbone, whole-image 1024×2048 inference)."""
    return ModelConfig(
        name="faseg_r50_cityscapes",
        num_classes=CITYSCAPES_CLASSES,
        backbone=BackboneConfig(resnet=ResNetConfig(norm="SyncBN")),
        default_input_size=(1024, 2048),
    )


@register_preset
def faseg_tiny() -> ModelConfig:
    """A small FASeg with every FASeg part (PEG K_p incl. res2, 4-level decoder, DFPQ, two HRCA rounds) for the
    demo model and the tests: a narrow ResNet-18-style backbone trained from scratch (BN, not FrozenBN),
    64-wide pixel decoder and decoder, 9 decoder layers (HRCA at layers 3 and 7), 256×256 input."""
    return ModelConfig(
        name="faseg_tiny",
        num_classes=8,
        backbone=BackboneConfig(resnet=ResNetConfig(depth=18, norm="BN", stem_out_channels=32, res2_out_channels=32)),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=64,
            mask_dim=64,
            encoder_layers=2,
            encoder_heads=4,
            encoder_ffn_dim=256,
            learnable_pe_input_size=256,
        ),
        decoder=DecoderConfig(hidden_dim=64, num_queries=24, nheads=4, dim_feedforward=256, dec_layers=9),
        default_input_size=(256, 256),
    )
