"""The numbers `faseg info` prints: parameters and MACs of a configuration at an input size."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .complexity import count_macs, count_parameters
from .config import ModelConfig
from .faseg import FASeg, build_model
from .inference import semantic_inference


class _SemanticModel(nn.Module):
    """Forward + official semantic inference, i.e. what fvcore measured on the official eval-mode model
    (``tools/analyze_model.py`` counts the model's eval forward, which ends in ``semantic_inference``)."""

    def __init__(self, model: FASeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        out = self.model(images)
        return semantic_inference(out.pred_logits, out.pred_masks, tuple(images.shape[-2:]))


def parse_size(text: str) -> tuple[int, int]:
    """'512x704' -> (512, 704) as (H, W); a single number means a square."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"size {text!r} must look like HxW, e.g. 512x512") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"size {text!r} must look like HxW with positive integers, e.g. 512x512")
    return values[0], values[1]


def describe(cfg: ModelConfig, size: tuple[int, int], max_depth: int = 2) -> dict[str, Any]:
    """Parameters, MACs (+ FLOPs = 2·MACs) and a per-module breakdown at ``size`` (H, W), batch 1."""
    h, w = size
    div = cfg.size_divisibility
    if h % div or w % div:
        raise ValueError(f"size {h}x{w}: height and width must be multiples of {div}")
    model = build_model(cfg).eval()
    wrapped = _SemanticModel(model).eval()
    report = count_macs(wrapped, torch.zeros(1, 3, h, w), max_depth=max_depth + 1)
    by_module = {name.removeprefix("model."): n for name, n in report.by_module.items() if name not in ("", "model")}
    params_by_module = {name: count_parameters(module) for name, module in model.named_modules() if name in by_module}
    head_macs = report.total - report.by_module.get("model", 0)
    return {
        "preset": cfg.name,
        "input_size": [h, w],
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "macs": report.total,
        "flops": 2 * report.total,
        "macs_semantic_inference": head_macs,
        "modules": {name: {"macs": macs, "params": params_by_module.get(name, 0)} for name, macs in by_module.items()},
        "macs_by_op": dict(sorted(report.by_op.items(), key=lambda kv: -kv[1])),
        "counting_rule": "one MAC per multiply-accumulate, fvcore rules (see README: MAC counting)",
    }
