"""One segmentation sample, as every dataset hands it out, and the ignore label value they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["IGNORE_INDEX", "SegmentationSample"]

IGNORE_INDEX = 255  # label value that is never a class


@dataclass
class SegmentationSample:
    """One image with its label map.

    Attributes:
        image: ``(H, W, 3)`` uint8, RGB.
        label: ``(H, W)`` integer class ids (uint8 for ≤ 255 classes); 255 = ignore.
        name: identifier of the sample (file stem, ``city/stem`` or ``synthetic_<split>_<index>``).
    """

    image: np.ndarray
    label: np.ndarray
    name: str
