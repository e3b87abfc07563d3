"""The Hugging Face ``image-segmentation`` task's answer (``outputs=hf`` on ``/v1/segment``).

What a Hugging Face inference endpoint returns for that task, so clients written for one (e.g.
``huggingface_hub.InferenceClient.image_segmentation``) work unchanged: a JSON list with one entry per class
present in the label map, in class-id order, ``{"label": name, "score": null, "mask": base64 PNG}``. The mask
is a single-channel (``L``) PNG at the label map's size, 255 where the class is and 0 elsewhere. ``score`` is
null, as the transformers pipeline answers for semantic segmentation (one mask per class, no instance score).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from PIL import Image

from .stats import class_name


class HFSegment(TypedDict):
    label: str
    score: float | None
    mask: str  # base64 of an L-mode PNG, 255 = the class


def hf_segments(labels: np.ndarray, classes: Sequence[str], compress_level: int = 1) -> list[HFSegment]:
    """One :class:`HFSegment` per class present in ``labels`` ((H, W) class ids), in class-id order."""
    segments: list[HFSegment] = []
    for class_id in np.unique(labels).tolist():
        mask = np.where(labels == class_id, np.uint8(255), np.uint8(0))
        buffer = io.BytesIO()
        Image.fromarray(mask, mode="L").save(buffer, format="PNG", compress_level=compress_level)
        segments.append(
            {
                "label": class_name(classes, int(class_id)),
                "score": None,
                "mask": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        )
    return segments
