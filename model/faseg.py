"""The meta-architecture: normalise → backbone → pixel decoder → masked transformer decoder.

After detectron2's ``SemanticSegmentor`` / Mask2Former's ``MaskFormer``, but the forward takes a padded
``(B, 3, H, W)`` tensor so the same forward is the one we export. Top-level names follow the official
checkpoints: ``backbone.*``, ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import build_backbone
from .backbone.base import Backbone
from .config import ModelConfig
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import DecoderOutput, MaskedTransformerDecoder


class SemSegHead(nn.Module):
    """Holds ``pixel_decoder`` and ``predictor`` (names as in the official ``MaskFormerHead``)."""

    def __init__(self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MaskedTransformerDecoder) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, Tensor], trace: bool = False, aux_outputs: bool = True) -> DecoderOutput:
        pix = self.pixel_decoder(features)
        out = self.predictor(
            pix.multi_scale_features, pix.mask_features, pix.pos, trace=trace, aux_outputs=aux_outputs
        )
        out.focus = pix.focus
        return out


class FASeg(nn.Module):
    """FASeg / Mask2Former semantic segmentation model.

    ``forward(images)``: images (B, 3, H, W) float RGB on the 0–255 scale, H and W multiples of
    ``cfg.size_divisibility`` (pad bottom/right first; :func:`faseg.model.inference.pad_to_multiple`).
    Returns a :class:`DecoderOutput`: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, H/4, W/4) and
    ``aux_outputs`` (every earlier prediction; used by the training criterion). ``aux_outputs=False`` skips
    them, and the full-resolution masks they need (serving: :class:`faseg.model.inference.ServingHead`).
    """

    def __init__(self, cfg: ModelConfig, backbone: Backbone, sem_seg_head: SemSegHead) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        # Set by faseg.model.checkpoint.from_pretrained: classes, palette, input size, metadata.
        self.checkpoint_info = None
        # Not saved in checkpoints (non-persistent in the official model too).
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def check_input(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        div = self.cfg.size_divisibility
        if h % div or w % div:
            raise ValueError(
                f"input height and width must be multiples of {div} (got {h}x{w}); pad the batch bottom/right "
                "first (faseg.model.inference.pad_to_multiple)"
            )

    def normalize(self, images: Tensor) -> Tensor:
        return (images.float() - self.pixel_mean) / self.pixel_std

    def forward(self, images: Tensor, trace: bool = False, aux_outputs: bool = True) -> DecoderOutput:
        self.check_input(images)
        features = self.backbone(self.normalize(images))
        return self.sem_seg_head(features, trace=trace, aux_outputs=aux_outputs)


def build_model(cfg: ModelConfig) -> FASeg:
    """Build a randomly initialised model (official inits) from a config."""
    backbone = build_backbone(cfg.backbone)
    shapes = backbone.output_shape()
    pixel_decoder = MSDeformAttnPixelDecoder(cfg.pixel_decoder, shapes, hr_level=cfg.decoder.hrca != "off")
    predictor = MaskedTransformerDecoder(
        cfg.decoder, cfg.num_classes, in_channels=cfg.pixel_decoder.conv_dim, mask_dim=cfg.pixel_decoder.mask_dim
    )
    return FASeg(cfg, backbone, SemSegHead(pixel_decoder, predictor))
