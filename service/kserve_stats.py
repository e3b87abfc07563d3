"""Triton's per-model statistics (``/v2/models/{m}[/versions/{v}]/stats``), kept by :class:`ServiceMetrics`.

Counting follows Triton: ``inference_count`` counts images, ``execution_count`` model runs. ``inference_stats``
sums per image: ``success`` / ``fail`` (whole request time), ``queue``, ``compute_input`` (decode + letterbox),
``compute_infer`` (per model run), ``compute_output`` (post-processing + encoding). ``batch_stats`` has one entry
per batch size; its ``count`` is the number of model runs of that size and its ``ns`` the time spent on them:
the run itself for ``compute_infer``, and the input / output work of the images those runs carried for
``compute_input`` / ``compute_output``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NS_PER_S = 1_000_000_000


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * NS_PER_S)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStatistics:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStatistics] = field(default_factory=lambda: defaultdict(BatchStatistics))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_batch(self, size: int, infer_s: float, queue_s: Sequence[float]) -> None:
        """One model run of ``size`` images."""
        with self.lock:
            self.inference_count += size
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.compute_infer.add(infer_s)
            batch = self.batches[size]
            batch.compute_infer.add(infer_s)
            batch.compute_input.count += 1
            batch.compute_output.count += 1
            for waited in queue_s:
                self.queue.add(waited)

    def record_image(
        self, *, ok: bool, total_s: float, input_s: float, output_s: float, batch_size: int | None = None
    ) -> None:
        """One image answered (``ok``) or failed; ``batch_size``: the size of the model run that carried it."""
        with self.lock:
            (self.success if ok else self.fail).add(total_s)
            if not ok:
                return
            self.compute_input.add(input_s)
            self.compute_output.add(output_s)
            if batch_size is not None and batch_size in self.batches:
                batch = self.batches[batch_size]
                batch.compute_input.ns += int(input_s * NS_PER_S)
                batch.compute_output.ns += int(output_s * NS_PER_S)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        with self.lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_json(),
                    "fail": self.fail.as_json(),
                    "queue": self.queue.as_json(),
                    "compute_input": self.compute_input.as_json(),
                    "compute_infer": self.compute_infer.as_json(),
                    "compute_output": self.compute_output.as_json(),
                    "cache_hit": {"count": 0, "ns": 0},
                    "cache_miss": {"count": 0, "ns": 0},
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.as_json(),
                        "compute_infer": b.compute_infer.as_json(),
                        "compute_output": b.compute_output.as_json(),
                    }
                    for size, b in sorted(self.batches.items())
                ],
            }
