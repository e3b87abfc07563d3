"""The raw backend of the parity run: the model loaded in this process exactly as the server loads it
(``Settings`` → ``load_backend``, the same runtime objects) and fed the inputs the server makes of the same
images."""

from __future__ import annotations

import argparse
import gc
import resource
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from faseg.loadtest.images import Payload

from .model_bench import latency_row


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_inputs(payloads: Sequence[Payload], settings: Any, input_size: tuple[int, int]) -> list[np.ndarray]:
    """The model inputs the server makes of ``payloads``: decoded and letterboxed by the service's code."""
    from faseg.service.imaging.preprocess import decode_image, fit, letterbox

    h, w = input_size
    tensors = []
    for payload in payloads:
        decoded = decode_image(
            payload.body, max_pixels=settings.max_image_pixels, draft_size=(w, h) if settings.jpeg_draft else None
        )
        tensors.append(letterbox(decoded.image, fit(decoded.size, input_size)))
    return tensors


class RawBackend:
    """The model loaded in this process exactly as the server loads it (same settings, same backend class),
    fed the inputs the server makes of the same images. With ``--instances N`` it is driven as the server
    drives it: N runs of the same batch size in flight at once (images/s counts all of them)."""

    def __init__(self, model: Path, payloads: Sequence[Payload], max_batch_size: int, server_args: Sequence[str]):
        from faseg.service.backends import load_backend
        from faseg.service.cli import add_arguments, settings_from_args

        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        flags = [*server_args, "--model", str(model), "--max-batch-size", str(max_batch_size)]
        known, _ = parser.parse_known_args(flags)
        settings = settings_from_args(known).effective()
        self.backend = load_backend(settings)
        self.tensors = server_inputs(payloads, settings, self.backend.input_size)
        self.max_batch_size = max_batch_size
        self.instances = settings.instances
        self._pool = ThreadPoolExecutor(self.instances, thread_name_prefix="raw-instance")
        for b in range(1, max_batch_size + 1):  # warm-up, as the server does before it turns ready
            self.backend.infer(self.batch(b))

    def batch(self, size: int, offset: int = 0) -> np.ndarray:
        return np.stack([self.tensors[(offset + i) % len(self.tensors)] for i in range(size)])

    def _infer_all(self, batches: Sequence[np.ndarray]) -> None:
        """One run per instance, all in flight at once (a plain call with one instance)."""
        if len(batches) == 1:
            self.backend.infer(batches[0])
            return
        for future in [self._pool.submit(self.backend.infer, b) for b in batches]:
            future.result()

    def time_batches(self, runs: int) -> dict[int, dict[str, Any]]:
        """Latency at every batch size 1 … max_batch_size, ``runs`` interleaved rounds, median. With several
        instances a timed run is one batch per instance at once; images/s counts every instance's images."""
        sizes = range(1, self.max_batch_size + 1)
        n = self.instances
        batches = {b: [self.batch(b, offset=i * b) for i in range(n)] for b in sizes}
        times: dict[int, list[float]] = {b: [] for b in sizes}
        cpu: dict[int, float] = dict.fromkeys(sizes, 0.0)
        for _ in range(runs):
            for b in sizes:
                cpu_started = _process_cpu()
                started = time.perf_counter()
                self._infer_all(batches[b])
                times[b].append(time.perf_counter() - started)
                cpu[b] += _process_cpu() - cpu_started
        rows = {b: latency_row(times[b], b) for b in sizes}
        for b, row in rows.items():
            median_s = row["median_ms"] / 1000.0
            row["instances"] = n
            row["ms_per_image"] = round(median_s / (b * n) * 1000.0, 3)
            row["images_per_s"] = round(b * n / median_s, 3)
            row["cpu_ms_per_image"] = round(cpu[b] / (runs * b * n) * 1000.0, 3)
        return rows

    def throughput(self, batch: int, seconds: float) -> float:
        """Images/s running batches of ``batch`` back to back for about ``seconds``, on every instance at once
        (each instance free-running, as the server's are)."""
        batches = [self.batch(batch, offset=i * batch) for i in range(max(1, len(self.tensors) // batch))]
        started = time.perf_counter()

        def worker(first: int) -> int:
            runs = 0
            while runs == 0 or time.perf_counter() - started < seconds:
                self.backend.infer(batches[(first + runs) % len(batches)])
                runs += 1
            return runs * batch

        if self.instances == 1:
            images = worker(0)
        else:
            images = sum(f.result() for f in [self._pool.submit(worker, i) for i in range(self.instances)])
        return images / (time.perf_counter() - started)

    def close(self) -> None:
        self._pool.shutdown()
        self.backend.close()
        del self.backend
        gc.collect()
