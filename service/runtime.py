"""Everything that lives from start-up to shutdown: the model registry (every model, version and input
bucket, each bucket with its backend and batcher), the decode and encode pools, and repository polling.
Built in the app's lifespan (never at import) and closed there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends import Backend
from .batching import BatchPolicy, DynamicBatcher
from .core.config import Settings
from .imaging.preprocess import bucket_name
from .metrics import ServiceMetrics
from .model_registry import ModelRegistry
from .model_version import ServedVersion
from .pipeline import Pipeline
from .repository import single_file_source

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings, metrics: ServiceMetrics, backend: Backend | None = None):
        self.settings = settings
        self.metrics = metrics
        self._decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="faseg-decode")
        self._encode_pool = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="faseg-encode")
        fixed = None
        if settings.model_repository is None and backend is None:
            if settings.model is None or settings.model_name is None:
                raise ValueError("settings are not resolved: call Settings.effective() with the model path first")
            fixed = {settings.model_name: single_file_source(settings.model_name, settings.model)}
        self.registry = ModelRegistry(
            settings,
            metrics,
            decode_pool=self._decode_pool,
            encode_pool=self._encode_pool,
            repository=settings.model_repository,
            fixed=fixed,
            injected=backend,
        )
        self._poll: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, metrics: ServiceMetrics, backend: Backend | None = None) -> Runtime:
        """Load every model (a given ``backend`` is served as the only one) and start the batchers."""
        runtime = cls(settings, metrics, backend)
        try:
            await runtime.registry.start()
        except BaseException:
            await runtime.close(0.0)
            raise
        if runtime.registry.models and runtime.registry.resolve_any() is not None:
            metrics.model_info.info(runtime.model_labels())
        if settings.poll_repository_s is not None:
            runtime._poll = asyncio.get_running_loop().create_task(
                runtime.registry.poll(settings.poll_repository_s), name="faseg-repository-poll"
            )
        return runtime

    # --- the default model (the only one with --model FILE) ----------------------------------------------

    @property
    def default(self) -> ServedVersion:
        """The highest version in memory of the default model (ready or not)."""
        served = self.registry.resolve_any()
        if served is None:
            raise LookupError("no model version is loaded")
        return served

    @property
    def backend(self) -> Backend:
        return self.default.primary.backend

    @property
    def batcher(self) -> DynamicBatcher:
        return self.default.primary.batcher

    @property
    def policy(self) -> BatchPolicy:
        return self.batcher.policy

    @property
    def pipeline(self) -> Pipeline:
        return self.default.pipeline

    def model_labels(self) -> dict[str, str]:
        served = self.default
        backend = served.primary.backend
        h, w = backend.input_size
        return {
            "name": served.name,
            "backend": backend.name,
            "device": backend.device,
            "precision": backend.precision,
            "input_size": f"{h}x{w}",
            "classes": str(len(backend.classes)),
            "max_batch_size": str(served.primary.batcher.policy.max_batch_size),
        }

    async def warm_up(self) -> float:
        """Warm up every loaded version (every bucket × batch size) and turn it ready; the seconds it took."""
        elapsed = await self.registry.warm_up()
        self.metrics.warmup_seconds.set(elapsed)
        return elapsed

    def longest_run_s(self) -> float:
        return max((v.longest_run_s() for v in self.registry.served()), default=0.0)

    def abort(self) -> None:
        self.registry.abort()

    def describe(self, served: ServedVersion | None = None) -> dict[str, Any]:
        served = served or self.default
        backend = served.primary.backend
        return {
            "name": served.name,
            "version": served.version,
            "state": served.state.value,
            "ready_since": served.ready_since,
            "backend": backend.name,
            "device": backend.device,
            "precision": backend.precision,
            "input_size": list(backend.input_size),
            "buckets": [list(b) for b in served.buckets],
            "bucket_names": [bucket_name(b) for b in served.buckets],
            "default_bucket": served.config.bucket,
            "max_batch_size": served.primary.batcher.policy.max_batch_size,
            "classes": [
                {"id": i, "name": name, "color": list(backend.palette[i])} for i, name in enumerate(backend.classes)
            ],
            "preset": backend.info.preset,
            "flavour": backend.info.flavour,
            "format_version": backend.info.format_version,
            "backend_details": backend.details(),
        }

    async def close(self, timeout_s: float) -> int:
        """Stop serving; returns the model runs that never returned (their threads cannot be joined)."""
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        unfinished = await self.registry.close(timeout_s)
        self._decode_pool.shutdown(wait=True, cancel_futures=True)
        self._encode_pool.shutdown(wait=True, cancel_futures=True)
        return unfinished
