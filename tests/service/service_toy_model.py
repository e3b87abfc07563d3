"""A tiny model with the exported-ONNX serving contract, for service tests.

A "colour classifier": each pixel gets the class whose prototype colour is nearest. The logits
2·p·x − |p|² are computed by a 1×1 convolution with integer weights on 0–255 inputs, so every logit is an
exact integer in float32 whatever the batch size or kernel (no ties broken differently between runs).
Input images: uint8 (N, 96, 128, 3) NHWC; outputs labels uint8 (N, H, W) and confidence float32 (N, H, W).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

CLASSES = ["black", "red", "green", "blue", "white", "yellow"]
PROTOTYPES = [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200), (255, 255, 255), (230, 220, 40)]
INPUT_SIZE = (96, 128)  # (H, W): non-square on purpose
PALETTE = [[0, 0, 0], [220, 20, 60], [0, 160, 0], [0, 0, 230], [250, 250, 250], [250, 220, 0]]


class ColourClassifier(nn.Module):
    """uint8 (N, H, W, 3) → labels uint8 (N, H, W), confidence float32 (N, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        protos = torch.tensor(PROTOTYPES, dtype=torch.float32)  # (K, 3)
        self.conv = nn.Conv2d(3, len(PROTOTYPES), kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_((2 * protos)[:, :, None, None])
            self.conv.bias.copy_(-(protos**2).sum(dim=1))
        self.classes = CLASSES
        self.palette = PALETTE
        self.input_size = INPUT_SIZE

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float()  # (N, 3, H, W)
        logits = self.conv(x)  # (N, K, H, W)
        labels = logits.argmax(dim=1).to(torch.uint8)
        confidence = torch.softmax(logits / 1000.0, dim=1).amax(dim=1)
        return labels, confidence


def reference_labels(image: np.ndarray) -> np.ndarray:
    """The same classification in numpy, for (H, W, 3) uint8 input."""
    protos = np.asarray(PROTOTYPES, dtype=np.int64)
    x = image.astype(np.int64)
    logits = 2 * np.einsum("hwc,kc->hwk", x, protos) - (protos**2).sum(axis=1)
    return logits.argmax(axis=-1).astype(np.uint8)


def export_toy_onnx(path: Path) -> Path:
    module = ColourClassifier().eval()
    example = torch.zeros((1, *INPUT_SIZE, 3), dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (small, no onnxscript dependency); torch warns that
        # it is legacy, attributing the warning to this caller.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["labels", "confidence"],
            dynamic_axes={"images": {0: "batch"}, "labels": {0: "batch"}, "confidence": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    metadata = {
        "faseg.classes": json.dumps(CLASSES),
        "faseg.palette": json.dumps(PALETTE),
        "faseg.input_size": json.dumps(list(INPUT_SIZE)),
        "faseg.preset": "toy_colour_classifier",
        "faseg.flavour": "portable",
        "faseg.format_version": "1",
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path
