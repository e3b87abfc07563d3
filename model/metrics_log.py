"""The metrics log of a training run: ``OUT/metrics.jsonl`` (one JSON object per line) and TensorBoard.

Records are ``{"type": "train", "iteration", "epoch", "loss", "loss_ce", ..., "lr", "grad_norm", "time",
"data_time"}`` per logged iteration and ``{"type": "eval", "iteration", "miou", "pixel_acc", "mean_acc",
"per_class_iou"}`` per evaluation. TensorBoard scalars are written too when the optional ``tensorboard``
package is installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["METRICS_NAME", "MetricsLog"]

METRICS_NAME = "metrics.jsonl"


def _json_safe(value: Any) -> Any:
    """NaN / inf → None (strict JSON has no NaN; a class absent from the val set has NaN IoU)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a line) and, when the ``tensorboard`` package is installed,
    TensorBoard scalars in the same directory. Only the main process writes."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / METRICS_NAME
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")
        if self.tb is not None:
            prefix = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("iteration", "epoch") and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record.get("iteration", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
