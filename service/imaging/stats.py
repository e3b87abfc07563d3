"""Per-class statistics of a label map: pixel count, fraction and bounding box of each class present."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from .letterbox import nearest_indices


class ClassStats(TypedDict):
    id: int
    name: str
    pixels: int
    fraction: float
    bbox: list[int]  # [x, y, width, height] in pixels of the label map


def class_name(classes: Sequence[str], class_id: int) -> str:
    return classes[class_id] if class_id < len(classes) else f"class_{class_id}"


def _extents(labels: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, ...]:
    """First / last row and column of each class in ``present`` (all of which occur in ``labels``):
    (y0, y1, x0, x1), each (P,)."""
    h, w = labels.shape
    if present.size == 0:  # an empty map
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    # Compact ids so the presence tables are (H, P) and (W, P), P = classes present, not all classes.
    compact = np.zeros(int(present[-1]) + 1, dtype=np.int64)
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
    return y0, y1, x0, x1


def _entries(
    counts: np.ndarray, present: np.ndarray, extents: tuple[np.ndarray, ...], total: float, classes: Sequence[str]
) -> list[ClassStats]:
    y0, y1, x0, x1 = extents
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


def class_stats(labels: np.ndarray, classes: Sequence[str]) -> list[ClassStats]:
    """labels (H, W) → one entry per class present, by class id."""
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    present = np.flatnonzero(counts)
    return _entries(counts, present, _extents(labels, present), float(h * w), classes)


def class_stats_resized(labels: np.ndarray, classes: Sequence[str], size: tuple[int, int]) -> list[ClassStats]:
    """``class_stats(restore-resized labels)`` without building the resized map: the statistics of ``labels``
    (h, w) resized to ``size`` (W, H) by nearest neighbour exactly as ``letterbox.restore`` resizes.

    Nearest-neighbour resizing repeats each source row ``m_r`` times (0 when downscaling skips it) and each
    column ``m_c`` times, in order, so a source pixel stands for ``m_r · m_c`` output pixels and a class's
    first / last output row is the first / last output row of its first / last used source row. The work
    is on the (smaller) model-resolution map instead of the image-sized one."""
    h, w = labels.shape
    out_w, out_h = size
    rows = nearest_indices(h, out_h)  # (out_h,) source row of each output row, non-decreasing
    cols = nearest_indices(w, out_w)
    used_rows, first_row, row_mult = np.unique(rows, return_index=True, return_counts=True)
    used_cols, first_col, col_mult = np.unique(cols, return_index=True, return_counts=True)
    used = labels[used_rows][:, used_cols]  # (R, C): the source pixels that appear in the output
    weights = np.outer(row_mult, col_mult).ravel()  # output pixels per source pixel
    counts = np.rint(np.bincount(used.ravel(), weights=weights, minlength=len(classes))).astype(np.int64)
    present = np.flatnonzero(counts)
    y0, y1, x0, x1 = _extents(used, present)
    last_row = first_row + row_mult - 1
    last_col = first_col + col_mult - 1
    extents = (first_row[y0], last_row[y1], first_col[x0], last_col[x1])
    return _entries(counts, present, extents, float(out_h * out_w), classes)
