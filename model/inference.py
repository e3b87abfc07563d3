"""Semantic inference in the official order, and the serving head used by export and the torch backend.

Official order (F: maskformer_model.py:220-251,281-285; spec §4): upsample the 1/4 mask logits bilinearly to
the *padded* input size → sigmoid → semseg[c] = Σ_q softmax(class logits)[q, c]·sigmoid(mask)[q] for the K real
classes (no-object dropped after the softmax over K+1) → crop the padding → bilinear resize to the output size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(images: Tensor, divisor: int = 32, value: float = 0.0) -> Tensor:
    """Pad (B, C, H, W) bottom/right to multiples of ``divisor``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % divisor, (-w) % divisor
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), value=value)


def semantic_inference(
    pred_logits: Tensor,
    pred_masks: Tensor,
    padded_size: tuple[int, int],
    image_size: tuple[int, int] | None = None,
    output_size: tuple[int, int] | None = None,
) -> Tensor:
    """Per-class scores in the official order.

    Args:
        pred_logits: (B, Q, K+1); pred_masks: (B, Q, h, w) mask logits at 1/4 of ``padded_size``.
        padded_size: (H, W) of the padded network input.
        image_size: (h, w) of the valid (unpadded) region; defaults to ``padded_size``.
        output_size: final (H', W'); defaults to ``image_size``.

    Returns:
        (B, K, H', W') scores in [0, 1] (not normalised over classes, exactly as the official model).
    """
    masks = F.interpolate(pred_masks, size=padded_size, mode="bilinear", align_corners=False).sigmoid()
    classes = pred_logits.softmax(-1)[..., :-1]  # (B, Q, K)
    semseg = torch.einsum("bqc,bqhw->bchw", classes, masks)  # (B, K, H, W)
    if image_size is not None and tuple(image_size) != tuple(padded_size):
        semseg = semseg[:, :, : image_size[0], : image_size[1]]
    target = output_size or image_size
    if target is not None and tuple(target) != tuple(semseg.shape[-2:]):
        semseg = F.interpolate(semseg, size=target, mode="bilinear", align_corners=False)
    return semseg


def labels_and_confidence(semseg: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(B, K, H, W) scores -> label map (B, H, W) uint8 (uint16 past 255 classes) and its score (B, H, W)."""
    confidence, labels = semseg.max(dim=1)
    dtype = torch.uint8 if num_classes <= 256 else torch.uint16
    return labels.to(dtype), confidence


class ServingHead(nn.Module):
    """Raw image batch in, label map and confidence out — the graph that export and serving run.

    ``forward(images)``: images (B, H, W, 3) uint8 (or float 0–255) RGB, NHWC as decoders produce them,
    H and W multiples of 32. Returns labels (B, H, W) and confidence (B, H, W) float32 at model resolution,
    plus the raw ``pred_logits`` / ``pred_masks`` when ``with_logits``.
    """

    def __init__(self, model: nn.Module, with_logits: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_logits = with_logits

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        x = images.permute(0, 3, 1, 2).float()  # (B, 3, H, W)
        out = self.model(x, aux_outputs=False)  # only the last prediction is served
        h, w = x.shape[-2:]
        semseg = semantic_inference(out.pred_logits, out.pred_masks, (h, w))
        labels, confidence = labels_and_confidence(semseg, self.model.num_classes)
        if self.with_logits:
            return labels, confidence, out.pred_logits, out.pred_masks
        return labels, confidence
