"""COCO run-length encoding of binary masks, compatible with pycocotools (``mask.encode`` / ``decode``).

Runs are taken in column-major order and alternate 0, 1, 0, ... starting with zeros (the first run may be
empty). The compressed string is maskApi.c's ``rleToString`` format: from the third run on, each count is
stored as the difference to the count two places before it; the number is written 5 bits per character,
low bits first, bit 0x20 meaning "more characters follow", offset into ASCII by 48.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from .stats import class_name

_CHAR_OFFSET = 48
_DATA_BITS = 5
_DATA_MASK = 0x1F
_SIGN_BIT = 0x10
_MORE_BIT = 0x20


class ClassRLE(TypedDict):
    id: int
    name: str
    size: list[int]  # [height, width]
    counts: str


def encode_counts(counts: Sequence[int] | np.ndarray) -> str:
    """Compressed RLE string of run lengths ``counts`` (vectorised over all counts at once)."""
    c = np.asarray(counts, dtype=np.int64)
    x = c.copy()
    x[3:] -= c[1:-2]  # from the fourth count on: the difference to the count two places before
    chars, valid = [], []
    active = np.ones(x.shape, dtype=bool)
    while active.any():
        low = x & _DATA_MASK
        x = x >> _DATA_BITS  # arithmetic shift: negative deltas end at -1
        more = np.where(low & _SIGN_BIT, x != -1, x != 0)
        chars.append(low | np.where(more, _MORE_BIT, 0))
        valid.append(active.copy())
        active &= more
    if not chars:
        return ""
    table = np.stack(chars, axis=1) + _CHAR_OFFSET  # (counts, characters), row-major = output order
    return table[np.stack(valid, axis=1)].astype(np.uint8).tobytes().decode("ascii")


def decode_counts(encoded: str) -> list[int]:
    """Inverse of ``encode_counts`` (used by tests and clients without pycocotools)."""
    counts: list[int] = []
    data = encoded.encode("ascii")
    p = 0
    while p < len(data):
        x, shift, more = 0, 0, True
        while more:
            c = data[p] - _CHAR_OFFSET
            x |= (c & _DATA_MASK) << shift
            more = bool(c & _MORE_BIT)
            p += 1
            shift += _DATA_BITS
            if not more and c & _SIGN_BIT:
                x |= -1 << shift
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def class_rles(labels: np.ndarray, classes: Sequence[str]) -> list[ClassRLE]:
    """One compressed RLE per class present in labels (H, W), computed from a single pass over the runs
    of the whole label map in column-major order."""
    h, w = labels.shape
    seq = labels.ravel(order="F")
    n = seq.size
    starts = np.concatenate(([0], np.flatnonzero(seq[1:] != seq[:-1]) + 1))
    ends = np.append(starts[1:], n)
    values = seq[starts]
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    result: list[ClassRLE] = []
    for group in np.split(order, boundaries):
        s, e = starts[group], ends[group]
        counts = np.empty(2 * s.size + 1, dtype=np.int64)
        counts[0] = s[0]  # zeros before the first run (may be 0)
        counts[1::2] = e - s  # ones
        counts[2:-1:2] = s[1:] - e[:-1]  # zeros between runs
        counts[-1] = n - e[-1]  # trailing zeros, dropped when empty (pycocotools ends with the last run)
        if counts[-1] == 0:
            counts = counts[:-1]
        class_id = int(values[group[0]])
        result.append(
            ClassRLE(id=class_id, name=class_name(classes, class_id), size=[h, w], counts=encode_counts(counts))
        )
    return result
