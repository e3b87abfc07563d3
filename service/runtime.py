"""Everything that lives from start-up to shutdown: the backend, the three thread pools, the batcher and
the pipeline. Built in the app's lifespan (never at import) and closed there."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends import Backend, load_backend
from .batching import BatchPolicy, DynamicBatcher
from .core.config import Settings
from .metrics import ServiceMetrics
from .pipeline import Pipeline

log = logging.getLogger(__name__)

# One model file per server: its version in /v1 and /v2 is always "1".
MODEL_VERSION = "1"


class Runtime:
    def __init__(self, settings: Settings, backend: Backend, metrics: ServiceMetrics, infer_pool: ThreadPoolExecutor):
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        # One inference thread per instance: the batcher keeps at most ``instances`` model runs in flight.
        self._infer_pool = infer_pool
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="faseg-decode")
        self._encode_pool = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="faseg-encode")
        self.policy = BatchPolicy(
            max_batch_size=min(settings.max_batch_size, backend.max_batch_size),
            max_queue_delay_s=settings.queue_delay_s,
            max_queue_size=settings.max_queue_size,
            instances=settings.instances,
        )
        self.batcher = DynamicBatcher(backend.infer, self.policy, infer_pool, metrics)
        self.pipeline = Pipeline(
            backend,
            self.batcher,
            decode_pool=self._decode_pool,
            encode_pool=self._encode_pool,
            metrics=metrics,
            settings=settings,
        )

    @classmethod
    async def start(cls, settings: Settings, metrics: ServiceMetrics, backend: Backend | None = None) -> Runtime:
        """Load the backend (on the inference thread) unless one is given, and start the batcher."""
        infer_pool = ThreadPoolExecutor(settings.instances, thread_name_prefix="faseg-infer")
        if backend is None:
            try:
                backend = await asyncio.get_running_loop().run_in_executor(infer_pool, load_backend, settings)
            except BaseException:
                infer_pool.shutdown(wait=False)
                raise
        runtime = cls(settings, backend, metrics, infer_pool)
        runtime.batcher.start()
        metrics.model_info.info(runtime.model_labels())
        return runtime

    def model_labels(self) -> dict[str, str]:
        h, w = self.backend.input_size
        return {
            "name": self.backend.model_name,
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": self.backend.precision,
            "input_size": f"{h}x{w}",
            "classes": str(len(self.backend.classes)),
            "max_batch_size": str(self.policy.max_batch_size),
        }

    async def warm_up(self) -> float:
        """Run every bucket × batch size once (on the inference thread); returns the seconds it took."""
        started = time.monotonic()
        if self.settings.warmup:
            sizes = range(1, self.policy.max_batch_size + 1)
            await asyncio.get_running_loop().run_in_executor(self._infer_pool, self.backend.warmup, sizes)
        elapsed = time.monotonic() - started
        self.metrics.warmup_seconds.set(elapsed)
        return elapsed

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.backend.model_name,
            "backend": self.backend.name,
            "device": self.backend.device,
            "precision": self.backend.precision,
            "input_size": list(self.backend.input_size),
            "buckets": [list(b) for b in self.backend.buckets()],
            "max_batch_size": self.policy.max_batch_size,
            "classes": [
                {"id": i, "name": name, "color": list(self.backend.palette[i])}
                for i, name in enumerate(self.backend.classes)
            ],
            "preset": self.backend.info.preset,
            "flavour": self.backend.info.flavour,
            "format_version": self.backend.info.format_version,
            "backend_details": self.backend.details(),
        }

    async def close(self, timeout_s: float) -> None:
        await self.batcher.stop(timeout_s)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._encode_pool.shutdown(wait=True, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(self._infer_pool, self.backend.close)
        self._infer_pool.shutdown(wait=True)
