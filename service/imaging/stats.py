"""Per-class statistics of a label map: pixel count, fraction and bounding box of each class present."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np


class ClassStats(TypedDict):
    id: int
    name: str
    pixels: int
    fraction: float
    bbox: list[int]  # [x, y, width, height] in pixels of the label map


def class_name(classes: Sequence[str], class_id: int) -> str:
    return classes[class_id] if class_id < len(classes) else f"class_{class_id}"


def class_stats(labels: np.ndarray, classes: Sequence[str]) -> list[ClassStats]:
    """labels (H, W) → one entry per class present, by class id."""
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    present = np.flatnonzero(counts)
    # Compact ids so the presence tables are (H, P) and (W, P), P = classes present, not all classes.
    compact = np.zeros(counts.shape[0], dtype=np.int64)
    compact[present] = np.arange(present.size)
    compact_labels = compact[labels]  # (H, W)
    in_row = np.zeros((h, present.size), dtype=bool)
    in_row[np.arange(h)[:, None], compact_labels] = True
    in_col = np.zeros((w, present.size), dtype=bool)
    in_col[np.arange(w)[None, :], compact_labels] = True
    y0 = in_row.argmax(axis=0)
    y1 = h - 1 - in_row[::-1].argmax(axis=0)
    x0 = in_col.argmax(axis=0)
    x1 = w - 1 - in_col[::-1].argmax(axis=0)
    total = float(h * w)
    return [
        ClassStats(
            id=int(c),
            name=class_name(classes, int(c)),
            pixels=int(counts[c]),
            fraction=round(float(counts[c]) / total, 6),
            bbox=[int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)],
        )
        for i, c in enumerate(present)
    ]
