"""ResNet with detectron2's module layout, so official detectron2 / Mask2Former / FASeg weights load by name.

Written after ``detectron2/modeling/backbone/resnet.py`` (``build_resnet_backbone``) and
``detectron2/layers/{wrappers,batch_norm,blocks}.py`` (spec §1.2, §5.2). State-dict names::

    stem.conv1.weight                      stem.conv1.norm.{weight,bias,running_mean,running_var}
    res{2..5}.{j}.conv{1,2,3}.weight       res{k}.{j}.conv{n}.norm.*
    res{k}.0.shortcut.weight               res{k}.0.shortcut.norm.*

The norm sits *inside* the conv (attribute ``norm`` of :class:`Conv2d`), exactly like detectron2's ``Conv2d``
wrapper; that is where the ``convN.norm`` names come from. Mapping to torchvision: ``stem.conv1`` → ``conv1``,
``stem.conv1.norm`` → ``bn1``, ``res{k}`` → ``layer{k-1}``, ``convN.norm`` → ``bnN``, ``shortcut`` →
``downsample.0``, ``shortcut.norm`` → ``downsample.1``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ResNetConfig
from .base import Backbone, ShapeSpec

NormLayer = Callable[[int], nn.Module]
"""Builds a normalisation layer for a given number of channels (torchvision's injected ``norm_layer``)."""

STAGE_NAMES = ("res2", "res3", "res4", "res5")

# Blocks per stage (D: build_resnet_backbone).
_BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (D: ``layers/batch_norm.py``).

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are all *buffers*: they are saved in the state
    dict, never returned by ``parameters()`` and never trained. The output equals ``nn.BatchNorm2d`` in eval
    mode with the same four tensors and eps.

    ``num_batches_tracked`` follows detectron2 (since its commit d4a5f28, May 2023): a freshly built layer has
    it as a ``None`` buffer, so it is absent from the state dict and a checkpoint entry for it is reported as
    an *unexpected* key (the importer drops it explicitly); a layer converted from a BatchNorm by
    :meth:`convert_frozen_batchnorm` (``freeze_at`` with norm BN / SyncBN) keeps the BatchNorm's counter, so
    its state dict has the same keys as the unfrozen model's. detectron2 also fills in missing
    ``running_mean`` / ``running_var`` for pre-v2 (Caffe2-era) checkpoints; we do not, so a missing statistic
    is always reported as a missing key.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        # An exact identity until weights are loaded (hence detectron2's running_var = 1 - eps).
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)
        self.register_buffer("num_batches_tracked", None)

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) -> (B, C, H, W); gradients flow to x, never to the buffers.
        if x.requires_grad:
            # As detectron2: F.batch_norm's backward would also compute (unused) weight / bias gradients and
            # keep extra memory for them, so the training path is the equivalent per-channel affine map.
            scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
            shift = self.bias - self.running_mean * scale  # (C,)
            return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)
        # One fused op (and a single BatchNormalization node in ONNX).
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` inside ``module`` by a frozen copy.

        Returns the new module when ``module`` itself is a batch norm, otherwise converts in place and
        returns ``module`` (same contract as detectron2's ``convert_frozen_batchnorm``).
        """
        if isinstance(module, nn.BatchNorm2d | nn.SyncBatchNorm):
            ref = module.running_mean if module.running_mean is not None else module.weight
            frozen = cls(module.num_features, eps=module.eps).to(ref.device)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight)
                    frozen.bias.copy_(module.bias)
                if module.running_mean is not None and module.running_var is not None:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            if module.num_batches_tracked is not None:  # kept, as detectron2 does
                frozen.num_batches_tracked = module.num_batches_tracked.clone()
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def get_norm(name: str) -> NormLayer:
    """Map a config norm name to a layer factory (D: ``get_norm``).

    - ``"FrozenBN"``: :class:`FrozenBatchNorm2d` (detectron2's default; the official ADE20K configs).
    - ``"BN"``: ``nn.BatchNorm2d``.
    - ``"SyncBN"``: ``nn.SyncBatchNorm`` (official Cityscapes config). torch only synchronises statistics
      in training mode with an initialised process group of more than one rank; otherwise it computes
      exactly what ``nn.BatchNorm2d`` does. So it runs on CPU in eval mode and in single-process training
      unchanged. Multi-process *CPU* training with it raises inside torch (synchronisation needs a GPU):
      use ``"BN"`` there. The state dict is identical to ``BatchNorm2d``'s (incl. ``num_batches_tracked``).
    """
    factories: dict[str, NormLayer] = {
        "FrozenBN": FrozenBatchNorm2d,
        "BN": nn.BatchNorm2d,
        "SyncBN": nn.SyncBatchNorm,
    }
    if name not in factories:
        raise ValueError(f"unknown ResNet norm {name!r}; expected one of {sorted(factories)}")
    return factories[name]


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and activation, like detectron2's ``layers.Conv2d``.

    The norm is a child module named ``norm``, so its tensors are saved as ``<conv>.norm.*``.
    """

    def __init__(
        self,
        *args: Any,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_msra_fill(conv: nn.Conv2d) -> None:
    """He (MSRA) init as fvcore's ``weight_init.c2_msra_fill``: normal, fan_out, ReLU gain; bias 0."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _FreezableBlock(nn.Module):
    """Common part of the stem and the residual blocks (D: ``CNNBlockBase``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> _FreezableBlock:
        """Stop gradients to every parameter and turn every batch norm into a FrozenBatchNorm2d."""
        for p in self.parameters():
            p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


class BasicStem(_FreezableBlock):
    """7×7/2 conv (no bias) + norm + ReLU, then 3×3/2 max-pool: total stride 4."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm_layer: NormLayer) -> None:
        super().__init__(in_channels, out_channels, stride=4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=norm_layer(out_channels),
        )
        c2_msra_fill(self.conv1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))  # (B, C, H/2, W/2)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (B, C, H/4, W/4)


def _projection_shortcut(in_channels: int, out_channels: int, stride: int, norm_layer: NormLayer) -> Conv2d | None:
    """A block's 1×1 projection shortcut, or None (identity) when the channel count does not change.

    detectron2 decides on the channel count alone (not on the stride); same here so the names match.
    """
    if in_channels == out_channels:
        return None
    return Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False, norm=norm_layer(out_channels))


class BasicBlock(_FreezableBlock):
    """Two 3×3 convs (ResNet-18/34). A 1×1 projection shortcut exists only when the channels change."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm_layer: NormLayer
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm_layer)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=False,
            norm=norm_layer(out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
            norm=norm_layer(out_channels),
        )
        for conv in (self.conv1, self.conv2, self.shortcut):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))  # (B, Cout, H/s, W/s)
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class BottleneckBlock(_FreezableBlock):
    """1×1 → 3×3 → 1×1 bottleneck (ResNet-50/101), with a 1×1 projection shortcut when channels change."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm_layer: NormLayer,
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection_shortcut(in_channels, out_channels, stride, norm_layer)
        # MSRA's original ResNet strides in the first 1×1 conv; fb.torch / Caffe2 / torchvision
        # ("ResNet v1.5") stride in the 3×3 conv. FASeg / Mask2Former use the latter (STRIDE_IN_1X1: False).
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=norm_layer(bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            bias=False,
            groups=num_groups,
            dilation=dilation,
            norm=norm_layer(bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, kernel_size=1, bias=False, norm=norm_layer(out_channels)
        )
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                c2_msra_fill(conv)
        # No zero-init of conv3.norm.weight: detectron2 leaves it commented out ("this somehow hurts
        # performance when training GN models from scratch"), unlike torchvision's zero_init_residual option.

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))  # (B, Cb, H, W), or H/s with stride_in_1x1
        out = F.relu_(self.conv2(out))  # (B, Cb, H/s, W/s)
        out = self.conv3(out)  # (B, Cout, H/s, W/s)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class ResNet(Backbone):
    """A stem plus four residual stages ``res2..res5`` (strides 4, 8, 16, 32)."""

    def __init__(
        self,
        stem: BasicStem,
        stages: Sequence[Sequence[_FreezableBlock]],
        out_features: Sequence[str] = STAGE_NAMES,
    ) -> None:
        super().__init__()
        if len(stages) != len(STAGE_NAMES):
            raise ValueError(f"ResNet expects {len(STAGE_NAMES)} stages, got {len(stages)}")
        unknown = set(out_features) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown ResNet output(s) {sorted(unknown)}; choose from {STAGE_NAMES}")
        self.stem = stem
        self._out_features = tuple(out_features)
        self._shapes: dict[str, ShapeSpec] = {}
        stride = stem.stride
        for name, blocks in zip(STAGE_NAMES, stages, strict=True):
            if not blocks:
                raise ValueError(f"stage {name} has no blocks")
            self.add_module(name, nn.Sequential(*blocks))
            for block in blocks:
                stride *= block.stride
            self._shapes[name] = ShapeSpec(channels=blocks[-1].out_channels, stride=stride)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNet takes a (B, C, H, W) input, got shape {tuple(x.shape)}")
        outputs: dict[str, Tensor] = {}
        x = self.stem(x)  # (B, C_stem, H/4, W/4)
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)  # (B, C_name, H/stride, W/stride)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self._out_features}

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the first ``freeze_at`` "stages" (D: ``ResNet.freeze``).

        0 freezes nothing; 1 freezes the stem; k ≥ 2 freezes the stem and res2..res(k). Frozen blocks get
        ``requires_grad=False`` and their batch norms become :class:`FrozenBatchNorm2d`.
        """
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if freeze_at >= 1:
            self.stem.freeze()
        for idx, name in enumerate(STAGE_NAMES, start=2):
            if freeze_at >= idx:
                for block in getattr(self, name).children():
                    block.freeze()
        return self


def build_resnet(cfg: ResNetConfig) -> ResNet:
    """Translate a :class:`ResNetConfig` into a :class:`ResNet` (D: ``build_resnet_backbone``)."""
    if cfg.depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"resnet.depth={cfg.depth} is not one of {sorted(_BLOCKS_PER_STAGE)}")
    basic = cfg.depth in (18, 34)
    # detectron2 asserts res2_out_channels == 64 for basic blocks; narrower basic-block ResNets are allowed
    # here (faseg_tiny uses 32) since their parameter names are unchanged and no official checkpoint is involved.
    if basic and cfg.num_groups != 1:
        raise ValueError(f"resnet.num_groups must be 1 for depth {cfg.depth}, got {cfg.num_groups}")
    norm_layer = get_norm(cfg.norm)

    stem = BasicStem(3, cfg.stem_out_channels, norm_layer=norm_layer)
    in_channels = cfg.stem_out_channels
    out_channels = cfg.res2_out_channels
    bottleneck_channels = cfg.num_groups * cfg.width_per_group
    stages: list[list[_FreezableBlock]] = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[cfg.depth]):
        blocks: list[_FreezableBlock] = []
        for j in range(num_blocks):
            stride = 2 if idx > 0 and j == 0 else 1  # res2 keeps the stem's stride 4
            if basic:
                blocks.append(BasicBlock(in_channels, out_channels, stride=stride, norm_layer=norm_layer))
            else:
                blocks.append(
                    BottleneckBlock(
                        in_channels,
                        out_channels,
                        bottleneck_channels=bottleneck_channels,
                        stride=stride,
                        num_groups=cfg.num_groups,
                        norm_layer=norm_layer,
                        stride_in_1x1=cfg.stride_in_1x1,
                    )
                )
            in_channels = out_channels
        stages.append(blocks)
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages).freeze(cfg.freeze_at)
