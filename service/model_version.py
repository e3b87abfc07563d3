"""One version of one model as it is served: a backend and a dynamic batcher per input bucket, the
pipeline that routes each image to its bucket, and the version's state.

States (the names of Triton's repository index): ``LOADING`` (files loading, warming up) → ``READY``
(takes traffic) → ``UNLOADING`` (no new requests; the admitted ones finish) → ``UNAVAILABLE`` (closed). A
version that failed to load is never built: the registry records the error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from .backends import Backend, BackendError
from .batching import BatchPolicy, DynamicBatcher
from .core.config import Settings
from .core.errors import BucketNotFound, NotReady, ServiceError
from .core.inflight import InFlight
from .core.lifecycle import NOT_READY_RETRY_AFTER_S
from .imaging.preprocess import AUTO, Bucket, bucket_name, parse_bucket
from .metrics import ServiceMetrics
from .pipeline import Pipeline
from .repository import ModelConfig

log = logging.getLogger(__name__)


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class BucketRunner:
    bucket: Bucket
    backend: Backend
    batcher: DynamicBatcher


def check_backends(name: str, backends: Sequence[Backend]) -> None:
    """The files of one version must agree on the classes and give distinct buckets."""
    first = backends[0]
    seen: set[Bucket] = set()
    for backend in backends:
        if backend.classes != first.classes:
            raise BackendError(f"model {name!r}: the files of one version must have the same classes")
        if backend.input_size in seen:
            raise BackendError(f"model {name!r}: two files have the input size {bucket_name(backend.input_size)}")
        seen.add(backend.input_size)


class _BucketObserver:
    """The batcher's observer for one bucket: the service metrics, plus images by model, version and bucket."""

    def __init__(self, metrics: ServiceMetrics, model: str, version: str, bucket: Bucket) -> None:
        self._metrics = metrics
        self._images = metrics.bucket_images.labels(model, version, bucket_name(bucket))
        self._stats = metrics.stats(model, version)

    def queue_depth(self, images: int) -> None:
        self._metrics.bucket_queue_depth(self, images)

    def batch_done(self, size: int, infer_s: float, queue_s: Sequence[float]) -> None:
        self._images.inc(size)
        self._metrics.batch_done(size, infer_s, queue_s)
        self._stats.record_batch(size, infer_s, queue_s)

    def images_dropped(self, reason: str, count: int) -> None:
        self._metrics.images_dropped(reason, count)

    def out_of_memory(self) -> None:
        self._metrics.out_of_memory()


class ServedVersion:
    def __init__(
        self,
        name: str,
        version: str,
        backends: Sequence[Backend],
        *,
        config: ModelConfig,
        settings: Settings,
        metrics: ServiceMetrics,
        infer_pool: ThreadPoolExecutor,
        decode_pool: Executor,
        encode_pool: Executor,
    ):
        check_backends(name, backends)
        self.name = name
        self.version = version
        self.config = config
        self.settings = settings
        self.state = VersionState.LOADING
        self.ready_since: float | None = None  # time.time() when it turned READY
        self._infer_pool = infer_pool
        self._in_flight = InFlight()  # requests using this version (unloading waits for them)
        max_batch = config.max_batch_size or settings.max_batch_size
        ordered = sorted(backends, key=lambda b: (b.input_size[0] * b.input_size[1], b.input_size))
        self.runners: dict[Bucket, BucketRunner] = {}
        self._observers: list[_BucketObserver] = []
        for backend in ordered:
            policy = BatchPolicy(
                max_batch_size=min(max_batch, backend.max_batch_size),
                max_queue_delay_s=settings.queue_delay_s,
                max_queue_size=settings.max_queue_size,
                instances=config.instances or settings.instances,
            )
            observer = _BucketObserver(metrics, name, version, backend.input_size)
            self._observers.append(observer)
            batcher = DynamicBatcher(backend.infer, policy, infer_pool, observer)
            self.runners[backend.input_size] = BucketRunner(backend.input_size, backend, batcher)
        self.pipeline = Pipeline(
            ordered[0].info,
            {b: r.batcher for b, r in self.runners.items()},
            decode_pool=decode_pool,
            encode_pool=encode_pool,
            metrics=metrics,
            stats=metrics.stats(name, version),
            settings=settings,
        )

    # --- facts -------------------------------------------------------------------------------------------

    @property
    def buckets(self) -> list[Bucket]:
        return list(self.runners)

    @property
    def primary(self) -> BucketRunner:
        """The first (smallest) bucket: what the one-bucket fields of /v1/models describe."""
        return next(iter(self.runners.values()))

    @property
    def ready(self) -> bool:
        return self.state is VersionState.READY

    def in_flight(self) -> int:
        return sum(r.batcher.in_flight for r in self.runners.values())

    def longest_run_s(self) -> float:
        return max(r.batcher.longest_run_s() for r in self.runners.values())

    # --- requests ----------------------------------------------------------------------------------------

    def named_bucket(self, requested: str | None) -> Bucket | None:
        """The bucket a request names (its ``bucket`` parameter, else the model's default; None for ``auto``:
        each image goes to its own, by the policy); 404 for one this version lacks."""
        text = requested or self.config.bucket
        if text == AUTO:
            return None
        bucket = parse_bucket(text)
        if bucket is None or bucket not in self.runners:
            names = [bucket_name(b) for b in self.buckets]
            raise BucketNotFound(
                f"model {self.name!r} version {self.version} has no bucket {text!r}; buckets: {names} or 'auto'"
            )
        return bucket

    def check_room(self, images: int, bucket: Bucket | None = None) -> None:
        """Raise what queueing ``images`` would raise: on ``bucket`` when given, else when no bucket has room."""
        runners = [self.runners[bucket]] if bucket is not None else list(self.runners.values())
        errors: list[ServiceError] = []
        for runner in runners:
            try:
                runner.batcher.check_room(images)
            except ServiceError as error:
                errors.append(error)
        if len(errors) == len(runners):
            raise errors[0]

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request as using this version until it leaves the block (unloading waits for it)."""
        if self.state is not VersionState.READY:
            raise NotReady(
                f"model {self.name!r} version {self.version} is {self.state.value.lower()}",
                retry_after_s=NOT_READY_RETRY_AFTER_S,
            )
        with self._in_flight.hold():
            yield

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        for runner in self.runners.values():
            runner.batcher.start()

    async def warm_up(self) -> float:
        """Run every bucket × batch size once (on the inference thread); returns the seconds it took."""
        started = time.monotonic()
        if self.settings.warmup:
            loop = asyncio.get_running_loop()
            for runner in self.runners.values():
                sizes = range(1, runner.batcher.policy.max_batch_size + 1)
                await loop.run_in_executor(self._infer_pool, runner.backend.warmup, sizes)
        return time.monotonic() - started

    def mark_ready(self) -> None:
        self.state = VersionState.READY
        self.ready_since = time.time()

    def abort(self) -> None:
        for runner in self.runners.values():
            runner.batcher.abort()

    async def unload(self, timeout_s: float) -> int:
        """Take no new requests, let the admitted ones finish (up to ``timeout_s``; what is left then gets
        503), then close the backends; returns the model runs that never returned (see ``close``)."""
        self.state = VersionState.UNLOADING
        deadline = time.monotonic() + timeout_s
        await self._in_flight.wait_idle(timeout_s)
        return await self.close(max(0.0, deadline - time.monotonic()))

    async def close(self, timeout_s: float) -> int:
        """Stop the batchers (``timeout_s`` for the work in flight) and close the backends. A backend whose
        model run has not returned by then is left open (closing it would wait behind that run); returns
        how many such runs there are, so the process can exit without joining their threads."""
        self.state = VersionState.UNLOADING
        await asyncio.gather(*(r.batcher.stop(timeout_s) for r in self.runners.values()))
        for observer in self._observers:
            observer.queue_depth(0)
        loop = asyncio.get_running_loop()
        for bucket, runner in self.runners.items():
            if runner.batcher.unfinished_runs:
                log.error(
                    "%s version %s bucket %s: a model run has not returned; its backend is left open",
                    self.name, self.version, bucket_name(bucket),
                )  # fmt: skip
                continue
            try:
                await loop.run_in_executor(self._infer_pool, runner.backend.close)
            except Exception:
                log.exception("closing %s version %s failed", self.name, self.version)
        self._infer_pool.shutdown(wait=False)
        self.state = VersionState.UNAVAILABLE
        return self.unfinished_runs

    @property
    def unfinished_runs(self) -> int:
        """Model runs of this version whose inference thread has not returned."""
        return sum(runner.batcher.unfinished_runs for runner in self.runners.values())
