"""The backbone contract (after detectron2's ``modeling/backbone/backbone.py``).

A backbone maps a normalised image batch ``(B, 3, H, W)`` to a dict of named feature maps
(``res2`` … ``res5`` at strides 4, 8, 16, 32) and describes them with ``output_shape()``.
The pixel decoder depends on nothing else.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class ShapeSpec:
    channels: int
    stride: int


class Backbone(nn.Module, metaclass=abc.ABCMeta):
    """Abstract base: subclasses implement ``forward`` and ``output_shape``."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised image -> {"res2": (B, C2, H/4, W/4), ..., "res5": (B, C5, H/32, W/32)}."""

    @abc.abstractmethod
    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of every returned feature map."""
