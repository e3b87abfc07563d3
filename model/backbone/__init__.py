"""Backbones: ResNet (detectron2 names) and Swin (official names).

``build_backbone(cfg)`` is the one entry point the model uses; both backbones follow the contract in
:mod:`.base` (a dict ``res2..res5`` of feature maps at strides 4, 8, 16, 32 plus ``output_shape()``).
"""

from __future__ import annotations

from ..config import BackboneConfig
from .base import Backbone, ShapeSpec
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    Conv2d,
    FrozenBatchNorm2d,
    ResNet,
    build_resnet,
    get_norm,
)
from .swin import DropPath, SwinTransformer, build_swin

__all__ = [
    "Backbone",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "Conv2d",
    "DropPath",
    "FrozenBatchNorm2d",
    "ResNet",
    "ShapeSpec",
    "SwinTransformer",
    "build_backbone",
    "build_resnet",
    "build_swin",
    "get_norm",
]


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """Build the backbone named by ``cfg.type`` from its sub-config (``cfg.resnet`` or ``cfg.swin``)."""
    if cfg.type == "resnet":
        return build_resnet(cfg.resnet)
    if cfg.type == "swin":
        return build_swin(cfg.swin)
    raise ValueError(f"backbone.type={cfg.type!r} is not one of ['resnet', 'swin']")
