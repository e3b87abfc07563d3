"""Prometheus metrics (prefix ``faseg_``) and the Triton-style statistics behind ``/v2/models/{m}/stats``.

One registry per app, created by the app factory (never the process-global default registry), so two
apps in one process do not collide. Counting follows Triton: a *request* is one HTTP call, an *image* is
one inference, a *batch* is one model run; mean batch size = ``faseg_batch_size_sum / _count``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from .kserve_stats import ModelStatistics

NS_PER_S = 1_000_000_000
STAGES = ("decode", "queue", "infer", "postprocess", "encode", "total")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "faseg_requests", "HTTP requests by route and status code", ["endpoint", "code"], registry=r
        )
        self.request_duration = Histogram(
            "faseg_request_duration_seconds",
            "HTTP request duration",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.stage_duration = Histogram(
            "faseg_stage_duration_seconds",
            "Duration of one image's pipeline stages",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram("faseg_batch_size", "Images per model run", buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.queue_depth_gauge = Gauge("faseg_queue_depth", "Images waiting in the batcher queue", registry=r)
        self.in_flight = Gauge("faseg_requests_in_flight", "Admitted work requests not yet answered", registry=r)
        self.rejections = Counter(
            "faseg_rejections",
            "Requests answered with an error, by reason (the error code)",
            ["reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "faseg_client_disconnects", "Requests whose client went away before the answer", registry=r
        )
        self.dropped = Counter(
            "faseg_images_dropped",
            "Queued images withdrawn before they ran (cancelled: client gone)",
            ["reason"],
            registry=r,
        )
        self.inferences = Counter("faseg_inference_images", "Images run through the model", registry=r)
        self.executions = Counter("faseg_batches", "Model runs", registry=r)
        self.oom = Counter("faseg_out_of_memory", "Model runs that ran out of device memory", registry=r)
        self.ready = Gauge("faseg_ready", "1 when /readyz answers 200", registry=r)
        self.warmup_seconds = Gauge("faseg_warmup_duration_seconds", "Duration of the last warm-up", registry=r)
        self.model_info = Info("faseg_model", "The served model", registry=r)
        # The model repository (docs/service.md, "Model repository"): per model, version and bucket.
        self.version_ready = Gauge(
            "faseg_model_version_ready", "1 while a model version takes traffic", ["model", "version"], registry=r
        )
        self.load_failures = Counter(
            "faseg_model_load_failures",
            "Model versions that failed to load or warm up",
            ["model", "version"],
            registry=r,
        )
        self.bucket_images = Counter(
            "faseg_model_inference_images",
            "Images run through the model, by model, version and input bucket",
            ["model", "version", "bucket"],
            registry=r,
        )
        self._stats: dict[tuple[str, str], ModelStatistics] = {}  # Triton-style statistics per model version
        self._stats_lock = threading.Lock()
        self._bucket_depths: dict[object, int] = {}  # written on the event loop only (the batchers' loop)

    # --- BatchObserver ----------------------------------------------------------------------------------

    def queue_depth(self, images: int) -> None:
        self.queue_depth_gauge.set(images)

    def bucket_queue_depth(self, bucket: object, images: int) -> None:
        """The queue of one bucket's batcher (a model repository has several): the gauge shows their sum."""
        self._bucket_depths[bucket] = images
        if not images:
            del self._bucket_depths[bucket]
        self.queue_depth_gauge.set(sum(self._bucket_depths.values()))

    def batch_done(self, size: int, infer_s: float, queue_s: Sequence[float]) -> None:
        self.batch_size.observe(size)
        self.inferences.inc(size)
        self.executions.inc()
        self.stage_duration.labels("infer").observe(infer_s)
        for waited in queue_s:
            self.stage_duration.labels("queue").observe(waited)

    def images_dropped(self, reason: str, count: int) -> None:
        self.dropped.labels(reason).inc(count)

    def out_of_memory(self) -> None:
        self.oom.inc()

    # --- pipeline ---------------------------------------------------------------------------------------

    def stage(self, name: str, seconds: float) -> None:
        self.stage_duration.labels(name).observe(seconds)

    # --- Triton-style statistics (/v2/models/{m}[/versions/{v}]/stats) -----------------------------------

    def stats(self, model: str, version: str) -> ModelStatistics:
        """The statistics of one model version (made on first use; kept across reloads of that version)."""
        with self._stats_lock:
            return self._stats.setdefault((model, version), ModelStatistics())
