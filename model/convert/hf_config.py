"""Hugging Face Mask2Former ``config.json`` -> our :class:`ModelConfig` (the config half of :mod:`.hf`).

Derived from HF's ``config.json``, so any semantic Mask2Former with a Swin backbone converts:
Swin ``embed_dim / depths / num_heads / window_size / mlp_ratio / qkv_bias / patch_size / drop_path_rate``;
``feature_size`` (pixel-decoder width), ``mask_feature_size``, ``encoder_layers``,
``encoder_feedforward_dim``, ``num_attention_heads`` (used by both the deformable encoder and the decoder, as
in HF), ``hidden_dim``, ``dim_feedforward``, ``num_queries``, ``pre_norm``, ``dropout``,
``decoder_layers`` (= layers + 1, the official convention), ``num_labels`` and the class names from
``id2label``; the input mean / std and size from ``preprocessor_config.json``. The result is a Mask2Former
configuration of our model: sine K_p, learnable positional queries, no HRCA, threshold 0.5.

:func:`faseg_config_from_mask2former` gives the FASeg counterpart of such a config, for a warm start.
"""

from __future__ import annotations

from typing import Any

from ..config import BackboneConfig, DecoderConfig, ModelConfig, PixelDecoderConfig, SwinConfig, apply_overrides
from .report import ConversionError

__all__ = ["config_from_hf", "faseg_config_from_mask2former"]


def _require(condition: bool, source: str, message: str) -> None:
    if not condition:
        raise ConversionError(f"{source}/config.json: unsupported Mask2Former config: {message}")


def config_from_hf(
    hf: dict[str, Any], preprocessor: dict[str, Any] | None = None, source: str = "<hf>"
) -> tuple[ModelConfig, list[str]]:
    """Our Mask2Former :class:`ModelConfig` and the class names for an HF ``config.json`` (see module doc)."""
    swin = _swin_config(hf, source)
    _require(hf.get("activation_function", "relu") == "relu", source, "decoder activation must be relu")
    feature = int(hf.get("feature_size", 256))
    hidden = int(hf.get("hidden_dim", 256))
    _require(
        feature == hidden and not hf.get("enforce_input_projection", False),
        source,
        f"feature_size {feature} != hidden_dim {hidden} (decoder input projections are not supported)",
    )
    _require(list(hf.get("feature_strides", [4, 8, 16, 32])) == [4, 8, 16, 32], source, "feature_strides must be 4..32")
    heads = int(hf.get("num_attention_heads", 8))
    dropout = float(hf.get("dropout", 0.0))
    pixel = PixelDecoderConfig(
        key_pe="sine",
        conv_dim=feature,
        mask_dim=int(hf.get("mask_feature_size", 256)),
        encoder_layers=int(hf.get("encoder_layers", 6)),
        encoder_heads=heads,
        encoder_ffn_dim=int(hf.get("encoder_feedforward_dim", 1024)),
        encoder_points=4,
        encoder_dropout=dropout,
        common_stride=int(hf.get("common_stride", 4)),
    )
    layers = int(hf.get("decoder_layers", 10)) - 1
    _require(layers >= 1, source, f"decoder_layers {layers + 1} leaves no decoder layer")
    decoder = DecoderConfig(
        hidden_dim=hidden,
        num_queries=int(hf.get("num_queries", 100)),
        nheads=heads,
        dim_feedforward=int(hf.get("dim_feedforward", 2048)),
        dec_layers=layers,
        pre_norm=bool(hf.get("pre_norm", False)),
        dropout=dropout,
        mask_threshold=0.5,
        positional_queries="learnable",
        hrca="off",
    )
    classes = _classes(hf, source)
    mean, std, size = _preprocessing(preprocessor or {})
    cfg = ModelConfig(
        name="mask2former_swin_hf",
        num_classes=len(classes),
        backbone=BackboneConfig(type="swin", swin=swin),
        pixel_decoder=pixel,
        decoder=decoder,
        pixel_mean=mean,
        pixel_std=std,
        default_input_size=size,
    )
    return cfg, classes


def _swin_config(hf: dict[str, Any], source: str) -> SwinConfig:
    """The Swin backbone of an HF config; anything our Swin cannot represent is refused."""
    bb = hf.get("backbone_config")
    _require(isinstance(bb, dict), source, "no backbone_config (a timm / named backbone is not supported)")
    _require(bb.get("model_type") == "swin", source, f"backbone {bb.get('model_type')!r}; only Swin is supported")
    _require(not hf.get("use_timm_backbone"), source, "use_timm_backbone is set")
    _require(not bb.get("use_absolute_embeddings"), source, "Swin absolute position embeddings are not supported")
    _require(bb.get("hidden_act", "gelu") == "gelu", source, f"Swin activation {bb.get('hidden_act')!r}")
    _require(float(bb.get("layer_norm_eps", 1e-5)) == 1e-5, source, "Swin layer_norm_eps must be 1e-5")
    _require(int(bb.get("num_channels", 3)) == 3, source, "the backbone must take 3-channel images")
    depths = tuple(int(d) for d in bb.get("depths", (2, 2, 6, 2)))
    _require(len(depths) == 4, source, f"Swin needs 4 stages, got depths {list(depths)}")
    out_features = bb.get("out_features") or ["stage1", "stage2", "stage3", "stage4"]
    _require(
        list(out_features) == ["stage1", "stage2", "stage3", "stage4"],
        source,
        f"backbone out_features must be stage1..stage4, got {out_features}",
    )
    return SwinConfig(
        embed_dim=int(bb.get("embed_dim", 96)),
        depths=depths,
        num_heads=tuple(int(h) for h in bb.get("num_heads", (3, 6, 12, 24))),
        window_size=int(bb.get("window_size", 7)),
        mlp_ratio=float(bb.get("mlp_ratio", 4.0)),
        qkv_bias=bool(bb.get("qkv_bias", True)),
        drop_path_rate=float(bb.get("drop_path_rate", 0.3)),
        patch_size=int(bb.get("patch_size", 4)),
        ape=False,
        patch_norm=True,
        pretrain_img_size=int(bb.get("image_size", 224)),
    )


def _classes(hf: dict[str, Any], source: str) -> list[str]:
    id2label = hf.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            by_id = {int(k): str(v) for k, v in id2label.items()}
        except ValueError:
            raise ConversionError(f"{source}/config.json: id2label keys must be integers") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise ConversionError(f"{source}/config.json: id2label ids must be 0..{len(by_id) - 1} without gaps")
        if "num_labels" in hf and int(hf["num_labels"]) != len(by_id):
            raise ConversionError(
                f"{source}/config.json: class-count mismatch: num_labels {hf['num_labels']} vs {len(by_id)} id2label"
            )
        return [by_id[i] for i in range(len(by_id))]
    count = int(hf.get("num_labels", 0))
    _require(count > 0, source, "no id2label / num_labels")
    return [f"class_{i}" for i in range(count)]


def _preprocessing(pre: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, int]]:
    scale = 1.0 / float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 1.0
    mean = tuple(round(float(m) * scale, 6) for m in pre.get("image_mean", (0.485, 0.456, 0.406)))
    std = tuple(round(float(s) * scale, 6) for s in pre.get("image_std", (0.229, 0.224, 0.225)))
    size = pre.get("size") or {}
    if isinstance(size, dict) and "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    elif isinstance(size, dict) and "shortest_edge" in size:
        hw = (int(size["shortest_edge"]),) * 2
    else:
        hw = (512, 512)
    hw = tuple(-(-v // 32) * 32 for v in hw)
    return mean, std, (hw[0], hw[1])


def faseg_config_from_mask2former(cfg: ModelConfig) -> ModelConfig:
    """The FASeg counterpart of a Mask2Former config (for a warm start without --preset): same backbone,
    widths, queries and classes; conditional K_p, DFPQ, window HRCA, threshold 0.15 and one 4-layer round
    (3 levels + HRCA) per Mask2Former round, plus the final 1/32 layer (9 → 13 layers)."""
    rounds = -(-cfg.decoder.dec_layers // 3)
    return apply_overrides(
        cfg,
        [
            'name="faseg_swin_hf_warm_start"',
            'pixel_decoder.key_pe="conditional"',
            'decoder.positional_queries="dfpq"',
            'decoder.hrca="window"',
            "decoder.mask_threshold=0.15",
            f"decoder.dec_layers={4 * rounds + 1}",
        ],
    )
