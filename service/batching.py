"""Dynamic batcher with Triton's semantics: FIFO queue, ``max_batch_size``, ``max_queue_delay``, a bounded
queue, per-image deadlines, and withdrawal of images whose client has gone.

The interface is as small as Triton's scheduler: ``submit``, ``in_flight``, ``stop`` (``abort`` when a
drain is cut short; ``longest_run_s`` for the health check that spots a model run that never returns).
Ownership: a submitted image belongs to the batcher until its future is done. The caller withdraws an
image by cancelling its future: a queued image is then dropped before it runs (and counted), a running
one finishes and its result is discarded.

The batch loop, a task on the event loop, repeats in this order:
  1. wait until something is queued and one of the ``instances`` is free (Triton's instance count: how many
     model runs may be in flight at once; 1 runs one batch at a time);
  2. wait until ``max_batch_size`` images are queued, or the oldest queued image has waited
     ``max_queue_delay`` (no waiting at all when the delay is 0, or while stopping);
  3. take up to ``max_batch_size`` images in FIFO order, failing those already past their deadline;
  4. start them on an inference thread (one model run; on out-of-memory, halves are retried down to a
     single image, which then fails alone), which resolves each image's future with its own result or error
     and frees the instance.
Images of one request may land in different batches; each counts one toward ``max_batch_size`` and
``max_queue_size``. Concurrent runs share one loaded model: the backend's ``infer`` must be thread-safe
(ONNX Runtime sessions and torch inference are; the TensorRT backend is limited to one instance).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .backends.base import BackendOutOfMemory, BackendOutput
from .core.errors import DeadlineExceeded, Draining, InternalError, OutOfMemory, QueueFull, ServiceError

log = logging.getLogger(__name__)

# Weight of the newest batch in the running mean of batch durations used for Retry-After.
BATCH_TIME_EWMA_WEIGHT = 0.2
MIN_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    instances: int = 1  # model runs in flight at once; the executor needs at least this many threads

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.max_queue_delay_s < 0 or self.instances < 1:
            raise ValueError(f"invalid batch policy {self}")


@dataclass(frozen=True)
class ItemResult:
    labels: np.ndarray  # (H, W) at model resolution
    confidence: np.ndarray  # (H, W)
    batch_size: int  # images in the model run that produced it
    queue_s: float
    infer_s: float


class BatchObserver(Protocol):
    """What the batcher reports (implemented by the service metrics)."""

    def queue_depth(self, images: int) -> None: ...

    def batch_done(self, size: int, infer_s: float, queue_s: Sequence[float]) -> None: ...

    def images_dropped(self, reason: str, count: int) -> None: ...

    def out_of_memory(self) -> None: ...


@dataclass(eq=False)
class _Item:
    image: np.ndarray
    deadline: float
    enqueued: float
    future: asyncio.Future[ItemResult]
    queued: bool = field(default=True)


Outcome = ItemResult | ServiceError
RunOutcome = tuple[np.ndarray, np.ndarray] | ServiceError  # one image's answer from an inference thread


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], BackendOutput],
        policy: BatchPolicy,
        executor: Executor,
        observer: BatchObserver,
    ):
        self._run = run
        self._policy = policy
        self._executor = executor
        self._observer = observer
        self._queue: collections.deque[_Item] = collections.deque()
        self._changed = asyncio.Event()
        self._running: set[_Item] = set()  # images of the batches now running
        self._runs: set[asyncio.Task[None]] = set()
        self._run_starts: dict[object, float] = {}  # monotonic start of every model run in progress
        self._threads: set[concurrent.futures.Future[list[RunOutcome]]] = set()  # model runs whose thread is busy
        self._closed = False
        self._batch_time_s = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="faseg-batcher")

    @property
    def in_flight(self) -> int:
        """Images queued or running."""
        return len(self._queue) + len(self._running)

    @property
    def unfinished_runs(self) -> int:
        """Model runs whose inference thread has not returned; after ``stop``, the runs that never returned."""
        return sum(not thread.done() for thread in list(self._threads))

    def submit(self, images: Sequence[np.ndarray], deadline: float) -> list[asyncio.Future[ItemResult]]:
        """Queue ``images`` (each (H, W, 3) uint8 of one bucket) to be done by ``deadline``
        (``time.monotonic()``); all are admitted or none (429 when the queue lacks room)."""
        self.check_room(len(images))
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = []
        for image in images:
            item = _Item(image=image, deadline=deadline, enqueued=now, future=loop.create_future())
            item.future.add_done_callback(lambda _f, item=item: self._withdraw(item))
            self._queue.append(item)
            futures.append(item.future)
        self._observer.queue_depth(len(self._queue))
        self._changed.set()
        return futures

    def check_room(self, images: int) -> None:
        """Raise what ``submit`` would raise for ``images`` more right now; lets a request be shed before
        its images are decoded."""
        if self._closed:
            raise Draining("the server is shutting down")
        if len(self._queue) + images > self._policy.max_queue_size:
            raise QueueFull(
                f"the queue holds {len(self._queue)} of {self._policy.max_queue_size} images",
                retry_after_s=self.retry_after_s(images),
            )

    def retry_after_s(self, images: int) -> int:
        """Seconds until the queue has probably drained enough to take ``images`` more."""
        batches = math.ceil((len(self._queue) + images) / self._policy.max_batch_size)
        rounds = math.ceil(batches / self._policy.instances)
        return max(MIN_RETRY_AFTER_S, math.ceil(rounds * self._batch_time_s))

    def longest_run_s(self) -> float:
        """How long the oldest model run in progress has been running (0 when none is)."""
        if not self._run_starts:
            return 0.0
        return time.monotonic() - min(self._run_starts.values())

    def abort(self) -> None:
        """Refuse new work and fail every queued and running image now with 503 (a model run in progress
        goes on in its thread; its results are discarded)."""
        self._closed = True
        leftover = [*self._queue, *self._running]
        self._queue.clear()
        for item in leftover:
            item.queued = False
            if not item.future.done():
                item.future.set_exception(Draining("the server is shutting down now"))
        self._observer.queue_depth(0)
        self._changed.set()

    async def stop(self, timeout_s: float) -> None:
        """Refuse new work, run what is queued (without waiting for fuller batches) for up to
        ``timeout_s``, then fail whatever is left with 503."""
        self._closed = True
        self._changed.set()
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        leftover = [*self._queue, *self._running]  # read before cancelling: the runs clear _running
        tasks = [t for t in (self._task, *self._runs) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in leftover:
            if not item.future.done():
                item.future.set_exception(Draining("the server shut down before this image was done"))
        self._queue.clear()

    # --- batch loop -------------------------------------------------------------------------------------

    def _withdraw(self, item: _Item) -> None:
        """Done-callback of every future: a cancelled image still in the queue leaves it uncomputed."""
        if not item.queued or not item.future.cancelled():
            return
        self._queue.remove(item)
        item.queued = False
        self._count_dropped(item)
        self._observer.queue_depth(len(self._queue))
        self._changed.set()

    def _count_dropped(self, item: _Item) -> None:
        reason = "deadline" if time.monotonic() >= item.deadline else "cancelled"
        self._observer.images_dropped(reason, 1)

    async def _loop(self) -> None:
        free = asyncio.Semaphore(self._policy.instances)
        while True:
            while not self._queue:
                self._changed.clear()
                await self._changed.wait()
            await free.acquire()  # a batch is formed only when an instance can run it (as Triton does)
            await self._wait_for_batch()
            batch = self._take_batch()
            if not batch:  # withdrawn or expired while waiting
                free.release()
                continue
            run = asyncio.get_running_loop().create_task(self._execute(batch), name="faseg-batch")
            self._runs.add(run)
            run.add_done_callback(lambda task: (self._runs.discard(task), free.release()))

    async def _wait_for_batch(self) -> None:
        while self._queue and len(self._queue) < self._policy.max_batch_size and not self._closed:
            remaining = self._queue[0].enqueued + self._policy.max_queue_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        now = time.monotonic()
        batch: list[_Item] = []
        expired = 0
        while self._queue and len(batch) < self._policy.max_batch_size:
            item = self._queue.popleft()
            item.queued = False
            if item.future.done():  # cancelled, its done-callback not yet run
                self._count_dropped(item)
                continue
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceeded("the deadline passed while the image was queued"))
                expired += 1
                continue
            batch.append(item)
        if expired:
            self._observer.images_dropped("deadline", expired)
        self._observer.queue_depth(len(self._queue))
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        started = time.monotonic()
        token = object()
        self._run_starts[token] = started
        self._running.update(batch)
        try:
            thread = self._executor.submit(self._run_split, [item.image for item in batch])
            self._threads.add(thread)
            thread.add_done_callback(self._threads.discard)
            outcomes = await asyncio.wrap_future(thread)
        except Exception as exc:  # a bug outside the backend call itself; every image of the run fails
            log.exception("batch of %d failed", len(batch))
            outcomes = [InternalError(f"inference failed: {type(exc).__name__}")] * len(batch)
        finally:
            self._running.difference_update(batch)
            del self._run_starts[token]
        infer_s = time.monotonic() - started
        weight = BATCH_TIME_EWMA_WEIGHT if self._batch_time_s else 1.0
        self._batch_time_s += weight * (infer_s - self._batch_time_s)
        queue_s = [started - item.enqueued for item in batch]
        self._observer.batch_done(len(batch), infer_s, queue_s)
        for item, waited, outcome in zip(batch, queue_s, outcomes, strict=True):
            if item.future.done():  # withdrawn while running: the result is discarded
                continue
            if isinstance(outcome, ServiceError):
                item.future.set_exception(outcome)
            else:
                labels, confidence = outcome
                item.future.set_result(
                    ItemResult(labels, confidence, batch_size=len(batch), queue_s=waited, infer_s=infer_s)
                )

    def _run_split(self, images: list[np.ndarray]) -> list[RunOutcome]:
        """Inference thread: one model run, halved and retried on out-of-memory."""
        try:
            output = self._run(np.stack(images))
        except BackendOutOfMemory:
            self._observer.out_of_memory()
            if len(images) == 1:
                return [OutOfMemory("the device ran out of memory for this image")]
            half = len(images) // 2
            log.warning("out of memory on a batch of %d; retrying as %d + %d", len(images), half, len(images) - half)
            return self._run_split(images[:half]) + self._run_split(images[half:])
        except Exception:
            log.exception("backend failed on a batch of %d", len(images))
            return [InternalError("the backend failed on this batch")] * len(images)
        return [(output.labels[i], output.confidence[i]) for i in range(len(images))]
