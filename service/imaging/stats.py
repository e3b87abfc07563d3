"""Per-class statistics of a label map: pixel count, fraction and bounding box of each class present."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from .preprocess import nearest_indices


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
    (y0, y1, x0, x1), each (P,).

    Worked on the map's horizontal runs of equal labels (a segmentation has a few per row, not one per
    pixel): a class's rows are those of its runs, its columns span from its runs' starts to their ends."""
    h, w = labels.shape
    if present.size == 0:  # an empty map
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    starts = np.empty((h, w), dtype=bool)
    starts[:, 0] = True
    np.not_equal(labels[:, 1:], labels[:, :-1], out=starts[:, 1:])
    row, col = np.nonzero(starts)  # row-major: runs in reading order
    run_label = labels[row, col]
    run_end = np.full(row.size, w - 1)  # last column of each run: the next run's start − 1 within a row
    same_row = row[1:] == row[:-1]
    run_end[:-1][same_row] = col[1:][same_row] - 1
    k = int(present[-1]) + 1
    y0, x0 = np.full(k, h), np.full(k, w)
    y1, x1 = np.full(k, -1), np.full(k, -1)
    np.minimum.at(y0, run_label, row)
    np.maximum.at(y1, run_label, row)
    np.minimum.at(x0, run_label, col)
    np.maximum.at(x1, run_label, run_end)
    return y0[present], y1[present], x0[present], x1[present]


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


# A service sees few distinct (model-resolution crop, image) sizes: the resize plans are cached.
@functools.lru_cache(maxsize=256)
def _nearest_plan(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a nearest-neighbour resize of ``src`` pixels to ``dst``: the source indices used and the first and
    last output index of each (read-only)."""
    source = nearest_indices(src, dst)  # (dst,) source index of each output pixel, non-decreasing
    used, first, mult = np.unique(source, return_index=True, return_counts=True)
    plan = (used, first, first + mult - 1)
    for array in plan:
        array.flags.writeable = False
    return plan


@functools.lru_cache(maxsize=16)  # at most 16 × (model input pixels) × 8 bytes
def _pixel_weights(h: int, out_h: int, w: int, out_w: int) -> np.ndarray:
    """How many output pixels each used source pixel stands for, flattened (R·C,), float64 as bincount wants."""
    _, first_row, last_row = _nearest_plan(h, out_h)
    _, first_col, last_col = _nearest_plan(w, out_w)
    # Left writeable: np.bincount is three times slower with read-only weights (numpy 2.4); never modified.
    return np.outer(last_row - first_row + 1, last_col - first_col + 1).ravel().astype(np.float64)


def class_stats_resized(labels: np.ndarray, classes: Sequence[str], size: tuple[int, int]) -> list[ClassStats]:
    """``class_stats(restore-resized labels)`` without building the resized map: the statistics of ``labels``
    (h, w) resized to ``size`` (W, H) by nearest neighbour exactly as ``letterbox.restore`` resizes.

    Nearest-neighbour resizing repeats each source row ``m_r`` times (0 when downscaling skips it) and each
    column ``m_c`` times, in order, so a source pixel stands for ``m_r · m_c`` output pixels and a class's
    first / last output row is the first / last output row of its first / last used source row. The work
    is on the (smaller) model-resolution map instead of the image-sized one."""
    h, w = labels.shape
    out_w, out_h = size
    used_rows, first_row, last_row = _nearest_plan(h, out_h)
    used_cols, first_col, last_col = _nearest_plan(w, out_w)
    used = labels[used_rows][:, used_cols]  # (R, C): the source pixels that appear in the output
    weights = _pixel_weights(h, out_h, w, out_w)
    counts = np.rint(np.bincount(used.ravel(), weights=weights, minlength=len(classes))).astype(np.int64)
    present = np.flatnonzero(counts)
    y0, y1, x0, x1 = _extents(used, present)
    extents = (first_row[y0], last_row[y1], first_col[x0], last_col[x1])
    return _entries(counts, present, extents, float(out_h * out_w), classes)
