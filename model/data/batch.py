"""Batching: transformed samples → a :class:`Batch` of padded images, label maps and Mask2Former targets.

:func:`collate` pads the images of a batch bottom/right to a common size (a multiple of the size divisibility)
with the pixel mean, stacks them as float ``(B, 3, H, W)`` in 0–255 RGB, and builds one binary mask per class
present in each label map (:func:`label_to_targets`, spec §3.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .sample import IGNORE_INDEX

__all__ = ["PIXEL_MEAN", "Batch", "collate", "label_to_targets"]

PIXEL_MEAN = (123.675, 116.280, 103.530)  # RGB, 0–255 (spec §1.1)


def label_to_targets(label: torch.Tensor, ignore: int = IGNORE_INDEX) -> dict[str, torch.Tensor]:
    """Semantic label map → Mask2Former targets: one binary mask per class present (spec §3.1).

    Args:
        label: ``(H, W)`` integer tensor of class ids, ``ignore`` for unlabelled pixels.
    Returns:
        ``{"labels": (N,) int64 class ids in ascending order, "masks": (N, H, W) bool}``; N may be 0.
    """
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {tuple(label.shape)}")
    label = label.long()
    classes = torch.unique(label)  # sorted
    classes = classes[classes != ignore]
    masks = label[None] == classes[:, None, None]  # (N, H, W)
    return {"labels": classes, "masks": masks}


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: ``(B, 3, H, W)`` float32, RGB 0–255 (the model normalises), padded bottom/right.
        labels: ``(B, H, W)`` int64 label maps; padding is ``ignore_index``.
        targets: per image ``{"labels": (N,), "masks": (N, H, W) bool}`` at the padded size (False in
            padding).
        image_sizes: ``(h, w)`` of each image before batch padding.
        names: sample names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    image_sizes: list[tuple[int, int]]
    names: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            targets=[{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()} for t in self.targets],
            image_sizes=self.image_sizes,
            names=self.names,
        )


def collate(
    samples: Sequence[Any],
    size_divisibility: int = 32,
    pad_value: float | Sequence[float] = PIXEL_MEAN,
    ignore_index: int = IGNORE_INDEX,
) -> Batch:
    """Stacks transformed samples into a :class:`Batch`.

    ``samples`` holds ``SegmentationSample``-like objects (``.image``, ``.label``, ``.name``) or
    ``(image, label)`` / ``(image, label, name)`` tuples of numpy arrays (uint8 ``(H, W, 3)``, ``(H, W)``).
    Images of different sizes are padded bottom/right to the largest, rounded up to ``size_divisibility``.
    The default ``pad_value`` is the pixel mean, i.e. the official "pad with 0 after normalisation"
    (spec §1.1); the ADE20K training pipeline has already padded to the crop size with 128, so nothing is
    added there.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    images, labels, names = [], [], []
    for i, s in enumerate(samples):
        if hasattr(s, "image"):
            image, label, name = s.image, s.label, getattr(s, "name", str(i))
        else:
            image, label, name = s[0], s[1], (s[2] if len(s) > 2 else str(i))
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"sample {name}: expected an (H, W, 3) image, got shape {image.shape}")
        if label is not None and label.shape != image.shape[:2]:
            raise ValueError(f"sample {name}: label shape {label.shape} != image shape {image.shape[:2]}")
        images.append(image)
        labels.append(label)
        names.append(name)
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    div = max(1, size_divisibility)
    max_h = -(-max(h for h, _ in sizes) // div) * div
    max_w = -(-max(w for _, w in sizes) // div) * div

    batch = torch.empty((len(images), 3, max_h, max_w), dtype=torch.float32)
    batch[:] = torch.as_tensor(pad_value, dtype=torch.float32).reshape(-1, 1, 1)
    label_batch = torch.full((len(images), max_h, max_w), ignore_index, dtype=torch.int64)
    for i, (image, label) in enumerate(zip(images, labels)):
        h, w = sizes[i]
        batch[i, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, h, w)
        if label is not None:
            label_batch[i, :h, :w] = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
    targets = [label_to_targets(label_batch[i], ignore_index) for i in range(len(images))]
    return Batch(images=batch, labels=label_batch, targets=targets, image_sizes=sizes, names=names)
