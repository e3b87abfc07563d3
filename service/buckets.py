"""Input shape buckets: which of a model's exported input sizes an image is letterboxed into.

A model version may be exported at several input sizes (one file per bucket). Each image goes to the bucket
that loses the least (docs/service.md, "Buckets"):

1. the closest aspect ratio (distance |log(w/h) − log(W/H)|, so 2:1 and 1:2 are equally far from 1:1);
2. among the buckets with that aspect ratio, the smallest one that is not smaller than the image (both sides
   at least the image's), so no detail is thrown away and no compute is spent on upscaling;
3. when none is that large, the largest of them.

A request may name a bucket (``bucket=HxW``) instead of ``auto``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Bucket = tuple[int, int]  # (height, width) of the model input
AUTO = "auto"
_BUCKET = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")
# Aspect ratios closer than this (in log space) count as equal: 256x512 and 250x500 are both 1:2.
ASPECT_TOLERANCE = 1e-3


def bucket_name(bucket: Bucket) -> str:
    """(256, 512) → "256x512" (height × width, as the files' input sizes are written)."""
    return f"{bucket[0]}x{bucket[1]}"


def parse_bucket(text: str) -> Bucket | None:
    """ "256x512" → (256, 512); None when ``text`` is not HxW."""
    match = _BUCKET.match(text)
    if match is None:
        return None
    return int(match[1]), int(match[2])


def _aspect_distance(image_size: tuple[int, int], bucket: Bucket) -> float:
    w, h = image_size
    return abs(math.log(w / h) - math.log(bucket[1] / bucket[0]))


def choose_bucket(image_size: tuple[int, int], buckets: Sequence[Bucket]) -> Bucket:
    """The bucket an image of ``image_size`` (width, height) goes to, by the policy above."""
    if not buckets:
        raise ValueError("a model version has at least one bucket")
    if len(buckets) == 1:
        return buckets[0]
    closest = min(_aspect_distance(image_size, b) for b in buckets)
    same_shape = [b for b in buckets if _aspect_distance(image_size, b) <= closest + ASPECT_TOLERANCE]
    w, h = image_size
    covering = [b for b in same_shape if b[0] >= h and b[1] >= w]
    if covering:
        return min(covering, key=lambda b: (b[0] * b[1], b))
    return max(same_shape, key=lambda b: (b[0] * b[1], b))
