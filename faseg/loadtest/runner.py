"""A load-test sweep against a running server: pre-flight, one step per concurrency (closed loop) or
rate (open loop), a ``/metrics`` scrape at both ends of every measurement window, progress on stderr,
and the report.

Order of one run:
  1. pre-flight: ``GET /readyz`` (unreachable → :class:`ServerUnreachable`; not ready → wait up to
     ``ready_timeout_s``), then ``GET /v1/models`` for the model's description;
  2. for each level: warm up for ``warmup_s`` (excluded), scrape, measure for ``duration_s``, scrape, wait
     for the requests still out, summarize;
  3. build the report (:mod:`faseg.loadtest.report`).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO
from urllib.parse import urlencode, urlsplit

import httpx

from . import client as lt
from .images import Payload
from .metrics_scrape import Snapshot, breakdown, parse
from .report import SCHEMA, environment, summary

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16)
READY_POLL_S = 0.25
CONTROL_TIMEOUT_S = 5.0  # pre-flight and /metrics requests
PROGRESS_INTERVAL_S = 0.5
# What the report keeps of GET /v1/models: enough to reproduce the server side of a run.
MODEL_KEYS = (
    "name",
    "version",
    "bucket_names",
    "backend",
    "device",
    "precision",
    "input_size",
    "max_batch_size",
    "preset",
    "flavour",
)
SERVER_SETTING_KEYS = (
    "max_batch_size",
    "instances",
    "max_queue_delay_ms",
    "max_queue_size",
    "intra_op_threads",
    "graph_optimization",
    "decode_threads",
    "encode_threads",
    "jpeg_draft",
    "access_log",
)


class ServerUnreachable(RuntimeError):
    """Nothing answers at the URL, or the server never became ready."""


@dataclass
class LoadTestConfig:
    url: str  # base URL of the server, e.g. http://127.0.0.1:8000
    payloads: Sequence[Payload]
    images: str  # how the payloads were made, for the report
    mode: Literal["closed", "open"] = "closed"
    levels: Sequence[float] = DEFAULT_CONCURRENCY  # concurrencies (closed) or requests/s (open)
    duration_s: float = 10.0
    warmup_s: float = 2.0
    endpoint: str = "/v1/segment"
    outputs: str = "stats"
    model: str | None = None  # ?model= (a model repository server); None: the server's default model
    bucket: str | None = None  # ?bucket=HxW or auto; None: the model's default
    timeout_s: float = 30.0
    client: str = "auto"
    seed: int = 0
    max_inflight: int = 1024
    ready_timeout_s: float = 30.0
    scrape_metrics: bool = True
    progress: TextIO | None = field(default_factory=lambda: sys.stderr)
    # CPU seconds used so far by the server process, when the caller can read them (it started the server)
    server_cpu: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--url must be an http(s) URL such as http://127.0.0.1:8000, not {self.url!r}")
        self.url = self.url.rstrip("/")
        if not self.levels:
            raise ValueError("no load levels given")
        if self.mode == "closed" and any(int(c) != c or c < 1 for c in self.levels):
            raise ValueError(f"concurrencies must be integers ≥ 1, got {list(self.levels)}")
        if self.mode == "open" and any(r <= 0 for r in self.levels):
            raise ValueError(f"rates must be > 0, got {list(self.levels)}")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration and timeout must be > 0 and warm-up ≥ 0")
        if not self.payloads:
            raise ValueError("no images to send")

    @property
    def target_url(self) -> str:
        params = {"outputs": self.outputs, "model": self.model, "bucket": self.bucket}
        query = urlencode({k: v for k, v in params.items() if v})
        return f"{self.url}{self.endpoint}" + (f"?{query}" if query else "")


async def preflight(control: httpx.AsyncClient, config: LoadTestConfig) -> dict[str, Any] | None:
    """Wait for ``/readyz``; return the model description of ``/v1/models`` (None if there is none)."""
    deadline = time.monotonic() + config.ready_timeout_s
    while True:
        try:
            response = await control.get(config.url + "/readyz")
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"cannot reach {config.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code == 200:
            break
        if time.monotonic() >= deadline:
            raise ServerUnreachable(
                f"{config.url}/readyz still answers {response.status_code} after {config.ready_timeout_s:g} s"
            )
        await asyncio.sleep(READY_POLL_S)
    try:
        response = await control.get(config.url + "/v1/models")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    body = response.json()
    models = body.get("models", [body]) if isinstance(body, dict) else body
    if config.model is not None:  # the highest version of the named model
        models = sorted((m for m in models if m.get("name") == config.model), key=lambda m: str(m.get("version")))[-1:]
    model = models[0] if models else {}
    described = {k: model[k] for k in MODEL_KEYS if k in model}
    settings = model.get("settings") or {}
    described["settings"] = {k: settings[k] for k in SERVER_SETTING_KEYS if k in settings}
    return described


async def scrape(control: httpx.AsyncClient, url: str) -> Snapshot | None:
    try:
        response = await control.get(url + "/metrics")
    except httpx.TransportError:
        return None
    return parse(response.text) if response.status_code == 200 else None


class _Progress:
    """One status line per step on a terminal (rewritten in place), or one line per step otherwise."""

    def __init__(self, stream: TextIO | None, label: str, index: int, total: int) -> None:
        self.stream = stream
        self.prefix = f"[{index}/{total}] {label:>10}"
        self.tty = bool(stream is not None and stream.isatty())

    def update(self, recorder: lt.Recorder, window: lt.Window) -> None:
        if not self.tty or self.stream is None:
            return
        now = time.monotonic()
        phase = "warm-up" if now < window.start else "measure"
        remaining = max(0.0, window.end - now)
        line = (
            f"{self.prefix}  {phase:<8} {remaining:5.1f} s left  {recorder.done:6d} done  {recorder.errors:5d} errors"
        )
        self.stream.write("\r" + line)
        self.stream.flush()

    def finish(self, step: dict[str, Any]) -> None:
        if self.stream is None:
            return
        latency = step["latency_ms"]
        p50 = "-" if latency["p50"] is None else f"{latency['p50']:.1f}"
        p99 = "-" if latency["p99"] is None else f"{latency['p99']:.1f}"
        errors = ", ".join(f"{k}: {v}" for k, v in step["errors"].items()) or "none"
        line = (
            f"{self.prefix}  {step['images_per_s']:8.2f} img/s  p50 {p50} ms  p99 {p99} ms  "
            f"{step['successes']}/{step['requests']} ok  errors: {errors}"
        )
        self.stream.write(("\r" if self.tty else "") + line + "\n")
        self.stream.flush()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_step(
    transport: lt.Transport,
    control: httpx.AsyncClient,
    config: LoadTestConfig,
    level: float,
    progress: _Progress,
) -> dict[str, Any]:
    target = lt.Target(config.target_url, config.payloads)
    recorder = lt.Recorder()
    window = lt.plan_window(config.warmup_s, config.duration_s)
    marks: dict[str, Any] = {}

    async def observe() -> None:
        """Scrape and read the client's CPU time when the window opens and when it closes."""
        for edge, at in (("start", window.start), ("end", window.end)):
            while (now := time.monotonic()) < at:
                progress.update(recorder, window)
                await asyncio.sleep(min(PROGRESS_INTERVAL_S, at - now))
            marks[f"cpu_{edge}"] = _cpu_seconds()
            marks[f"server_cpu_{edge}"] = config.server_cpu() if config.server_cpu else None
            marks[f"metrics_{edge}"] = await scrape(control, config.url) if config.scrape_metrics else None

    observer = asyncio.get_running_loop().create_task(observe())
    try:
        if config.mode == "closed":
            await lt.closed_loop(transport, target, int(level), window, recorder)
        else:
            await lt.open_loop(
                transport, target, level, window, recorder, seed=config.seed, max_inflight=config.max_inflight
            )
        await observer
    finally:
        observer.cancel()
    step: dict[str, Any] = {
        "mode": config.mode,
        "concurrency": int(level) if config.mode == "closed" else None,
        "rate": float(level) if config.mode == "open" else None,
        **lt.summarize(recorder.samples, window),
    }
    cpu = marks["cpu_end"] - marks["cpu_start"]
    step["client"] = {"cpu_seconds": round(cpu, 3), "cpu_percent": round(100 * cpu / window.seconds, 1)}
    before, after = marks["metrics_start"], marks["metrics_end"]
    step["server"] = breakdown(before, after) if before is not None and after is not None else None
    images = step["images_per_s"] * step["duration_s"]
    step["client"]["cpu_ms_per_image"] = round(cpu * 1000 / images, 3) if images else None
    if marks["server_cpu_start"] is not None and step["server"] is not None:
        server_cpu = marks["server_cpu_end"] - marks["server_cpu_start"]
        step["server"]["process_cpu_seconds"] = round(server_cpu, 3)
        step["server"]["process_cpu_ms_per_image"] = round(server_cpu * 1000 / images, 3) if images else None
    progress.finish(step)
    return step


async def run_async(config: LoadTestConfig) -> dict[str, Any]:
    """Run the sweep; raises :class:`ServerUnreachable` before sending any load if the server is not there."""
    started = environment()
    connections = int(max(config.levels)) if config.mode == "closed" else config.max_inflight
    async with httpx.AsyncClient(timeout=CONTROL_TIMEOUT_S) as control:
        model = await preflight(control, config)
        steps = []
        async with lt.make_transport(config.client, connections, config.timeout_s) as transport:
            for index, level in enumerate(config.levels, start=1):
                label = f"c={int(level)}" if config.mode == "closed" else f"r={level:g}/s"
                progress = _Progress(config.progress, label, index, len(config.levels))
                steps.append(await run_step(transport, control, config, level, progress))
            client_name = f"{transport.name} {transport.version}"
    sizes = [len(p.body) for p in config.payloads]
    return {
        "schema": SCHEMA,
        "tool": {"name": "faseg loadtest", "client": client_name},
        "environment": started,
        "target": {
            "url": config.url,
            "endpoint": config.endpoint,
            "outputs": config.outputs,
            "request_url": config.target_url,
            "model": model,
        },
        "settings": {
            "mode": config.mode,
            "levels": [int(v) if config.mode == "closed" else float(v) for v in config.levels],
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "timeout_s": config.timeout_s,
            "seed": config.seed,
            "max_inflight": config.max_inflight if config.mode == "open" else None,
            "images": {"source": config.images, "count": len(sizes), "mean_bytes": round(sum(sizes) / len(sizes))},
            "client_cpu_note": "the client runs on the same machine as the server unless stated otherwise; "
            "its CPU use (steps[].client) is part of the measurement",
        },
        "steps": steps,
        "summary": summary(steps),
    }


def run(config: LoadTestConfig) -> dict[str, Any]:
    return asyncio.run(run_async(config))
