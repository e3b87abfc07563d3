"""The dynamic batcher alone, with a fake backend (in-process, no server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from faseg.service.backends.base import BackendOutOfMemory, BackendOutput
from faseg.service.batching import BatchPolicy, DynamicBatcher
from faseg.service.core.errors import DeadlineExceeded, Draining, OutOfMemory, QueueFull

H, W = 4, 6


class Recorder:
    """A fake backend (labels = the image's first pixel value) and BatchObserver in one."""

    def __init__(self, *, delay_s: float = 0.0, oom_above: int | None = None) -> None:
        self.batches: list[int] = []
        self.dropped: dict[str, int] = {}
        self.ooms = 0
        self.delay_s = delay_s
        self.oom_above = oom_above
        self.started = threading.Event()

    def run(self, images: np.ndarray) -> BackendOutput:
        self.started.set()
        if self.oom_above is not None and len(images) > self.oom_above:
            raise BackendOutOfMemory("fake OOM")
        time.sleep(self.delay_s)
        self.batches.append(len(images))
        labels = np.broadcast_to(images[:, :1, :1, 0], images.shape[:3]).astype(np.uint8)
        return BackendOutput(labels=labels, confidence=np.ones(images.shape[:3], dtype=np.float32))

    def queue_depth(self, images: int) -> None:
        pass

    def batch_done(self, size: int, infer_s: float, queue_s: Sequence[float]) -> None:
        pass

    def images_dropped(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count

    def out_of_memory(self) -> None:
        self.ooms += 1


def _image(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, dtype=np.uint8)


async def _with_batcher(recorder: Recorder, policy: BatchPolicy, body):  # type: ignore[no-untyped-def]
    with ThreadPoolExecutor(1) as pool:
        batcher = DynamicBatcher(recorder.run, policy, pool, recorder)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop(timeout_s=5.0)


def test_delay_gathers_a_batch_and_results_map_back() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.2, max_queue_size=64)

    async def body(batcher: DynamicBatcher) -> list[int]:
        futures = [f for v in range(5) for f in batcher.submit([_image(v)], time.monotonic() + 10)]
        results = await asyncio.gather(*futures)
        return [int(r.labels[0, 0]) for r in results]

    assert asyncio.run(_with_batcher(recorder, policy, body)) == [0, 1, 2, 3, 4]
    assert recorder.batches == [5]


def test_full_batch_runs_without_waiting_and_requests_split_across_batches() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=5.0, max_queue_size=64)

    async def body(batcher: DynamicBatcher) -> float:
        started = time.monotonic()
        futures = batcher.submit([_image(v) for v in range(8)], time.monotonic() + 10)  # one request, 8 images
        await asyncio.gather(*futures)
        return time.monotonic() - started

    assert asyncio.run(_with_batcher(recorder, policy, body)) < 2.0
    assert recorder.batches == [4, 4]


def test_queue_full_is_all_or_nothing_with_retry_after() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=1.0, max_queue_size=3)

    async def body(batcher: DynamicBatcher) -> None:
        batcher.submit([_image(1), _image(2)], time.monotonic() + 10)
        with pytest.raises(QueueFull) as excinfo:
            batcher.submit([_image(3), _image(4)], time.monotonic() + 10)
        assert excinfo.value.retry_after_s is not None and excinfo.value.retry_after_s >= 1
        assert batcher.in_flight == 2
        batcher.submit([_image(3)], time.monotonic() + 10)

    asyncio.run(_with_batcher(recorder, policy, body))


def test_cancelled_image_is_never_run() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.3, max_queue_size=64)

    async def body(batcher: DynamicBatcher) -> None:
        [gone] = batcher.submit([_image(9)], time.monotonic() + 10)
        [kept] = batcher.submit([_image(1)], time.monotonic() + 10)
        gone.cancel()
        await asyncio.sleep(0)
        assert batcher.in_flight == 1
        assert int((await kept).labels[0, 0]) == 1

    asyncio.run(_with_batcher(recorder, policy, body))
    assert recorder.batches == [1]
    assert recorder.dropped == {"cancelled": 1}


def test_expired_image_fails_before_running() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.2, max_queue_size=64)

    async def body(batcher: DynamicBatcher) -> None:
        [late] = batcher.submit([_image(1)], time.monotonic() + 0.05)
        [fine] = batcher.submit([_image(2)], time.monotonic() + 10)
        with pytest.raises(DeadlineExceeded):
            await late
        await fine

    asyncio.run(_with_batcher(recorder, policy, body))
    assert recorder.batches == [1]
    assert recorder.dropped == {"deadline": 1}


def test_out_of_memory_splits_then_fails_alone() -> None:
    recorder = Recorder(oom_above=2)
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.1, max_queue_size=64)

    async def body(batcher: DynamicBatcher) -> list[int]:
        results = await asyncio.gather(*batcher.submit([_image(v) for v in range(7)], time.monotonic() + 10))
        return [int(r.labels[0, 0]) for r in results]

    assert asyncio.run(_with_batcher(recorder, policy, body)) == list(range(7))
    assert sum(recorder.batches) == 7 and max(recorder.batches) <= 2

    recorder = Recorder(oom_above=0)

    async def single(batcher: DynamicBatcher) -> None:
        with pytest.raises(OutOfMemory):
            await batcher.submit([_image(1)], time.monotonic() + 10)[0]

    asyncio.run(_with_batcher(recorder, policy, single))


def test_stop_runs_queued_work_then_refuses() -> None:
    recorder = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=10.0, max_queue_size=64)

    async def body() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(recorder.run, policy, pool, recorder)
            batcher.start()
            futures = batcher.submit([_image(3)], time.monotonic() + 30)
            await batcher.stop(timeout_s=5.0)  # does not wait the 10 s delay
            assert int(futures[0].result().labels[0, 0]) == 3
            with pytest.raises(Draining):
                batcher.submit([_image(1)], time.monotonic() + 10)

    started = time.monotonic()
    asyncio.run(body())
    assert time.monotonic() - started < 5.0


def test_stop_timeout_fails_running_and_queued_images_with_503() -> None:
    recorder = Recorder(delay_s=0.5)
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=64)

    async def body() -> None:
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(recorder.run, policy, pool, recorder)
            batcher.start()
            running, queued = batcher.submit([_image(1), _image(2)], time.monotonic() + 30)
            await asyncio.get_running_loop().run_in_executor(None, recorder.started.wait)
            await batcher.stop(timeout_s=0.05)
            for future in (running, queued):
                with pytest.raises(Draining):
                    future.result()

    asyncio.run(body())


class Overlap(Recorder):
    """Records how many model runs are in flight at once."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def run(self, images: np.ndarray) -> BackendOutput:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return super().run(images)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_instances_bound_the_runs_in_flight(instances: int) -> None:
    """Triton's instance count: up to `instances` batches run at once, never more; results still map back."""
    recorder = Overlap(delay_s=0.1)
    policy = BatchPolicy(max_batch_size=2, max_queue_delay_s=0.0, max_queue_size=64, instances=instances)

    async def body() -> None:
        with ThreadPoolExecutor(4) as pool:  # more threads than instances: the batcher is what bounds them
            batcher = DynamicBatcher(recorder.run, policy, pool, recorder)
            batcher.start()
            try:
                futures = batcher.submit([_image(v) for v in range(12)], time.monotonic() + 30)
                results = await asyncio.gather(*futures)
            finally:
                await batcher.stop(timeout_s=5.0)
        assert [int(r.labels[0, 0]) for r in results] == list(range(12))
        assert all(r.batch_size == 2 for r in results)

    started = time.monotonic()
    asyncio.run(body())
    elapsed = time.monotonic() - started
    assert recorder.most == instances
    assert sorted(recorder.batches) == [2] * 6
    # 6 batches of 0.1 s, `instances` at a time
    assert elapsed >= 0.1 * -(-6 // instances) - 0.02


def test_stop_with_several_runs_in_flight_fails_them_with_503() -> None:
    recorder = Overlap(delay_s=0.5)
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=64, instances=2)

    async def body() -> None:
        with ThreadPoolExecutor(2) as pool:
            batcher = DynamicBatcher(recorder.run, policy, pool, recorder)
            batcher.start()
            futures = batcher.submit([_image(1), _image(2), _image(3)], time.monotonic() + 30)
            while recorder.now < 2:
                await asyncio.sleep(0.01)
            assert batcher.in_flight == 3  # two running, one queued
            await batcher.stop(timeout_s=0.05)
            for future in futures:
                with pytest.raises(Draining):
                    future.result()

    asyncio.run(body())


def test_policy_rejects_zero_instances() -> None:
    with pytest.raises(ValueError, match="invalid batch policy"):
        BatchPolicy(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=1, instances=0)
