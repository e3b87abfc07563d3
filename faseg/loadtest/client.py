"""The load generator: an async HTTP client driving ``POST /v1/segment`` in a closed or an open loop.

- **Closed loop** (``closed_loop``): ``concurrency`` workers, each sending its next request as soon as the
  previous one is answered (what perf_analyzer's ``--concurrency-range`` and locust do). Finds the knee of
  the latency–throughput curve, but under overload it hides tail latency (coordinated omission).
- **Open loop** (``open_loop``): requests arrive at Poisson times at ``rate`` per second, whether or not
  earlier ones were answered; latency is measured from each request's *scheduled* arrival, so a lagging
  client or server cannot hide queueing.

Both run ``warmup_s`` first and then measure for ``duration_s``. A request belongs to the measurement when
it was scheduled inside the window; throughput counts the successful answers that arrived inside it.

The client runs on the same machine as the server in most of our runs: its CPU use is part of what is
measured, so it is kept lean (one connection pool, bodies prepared up front, no per-request parsing) and
its own CPU time is reported with every step.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .images import Payload

# Non-HTTP outcomes, reported beside the status codes.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
CLIENT_ERROR = "client_error"
CLIENT_OVERFLOW = "client_overflow"  # open loop: more than max_inflight requests outstanding, not sent
OK = 200
PERCENTILES = (50, 90, 95, 99)
CONNECTION_ERROR_BACKOFF_S = 0.05
MS = 1000.0


class TransportFailure(Exception):
    """A request that got no HTTP answer; ``kind`` is one of TIMEOUT, CONNECTION_ERROR, CLIENT_ERROR."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Transport(abc.ABC):
    """One pooled async HTTP client. ``post`` returns (status, bytes received) or raises TransportFailure."""

    name: str

    def __init__(self, connections: int, timeout_s: float) -> None:
        self.connections = connections
        self.timeout_s = timeout_s

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def post(self, url: str, body: bytes, content_type: str) -> tuple[int, int]: ...

    @property
    @abc.abstractmethod
    def version(self) -> str: ...

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AiohttpTransport(Transport):
    name = "aiohttp"

    async def open(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s), auto_decompress=False
        )

    async def close(self) -> None:
        await self._session.close()

    @property
    def version(self) -> str:
        import aiohttp

        return aiohttp.__version__

    async def post(self, url: str, body: bytes, content_type: str) -> tuple[int, int]:
        aiohttp = self._aiohttp
        try:
            async with self._session.post(url, data=body, headers={"Content-Type": content_type}) as response:
                return response.status, len(await response.read())
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is also a connection error: check it first
            raise TransportFailure(TIMEOUT, str(exc) or type(exc).__name__) from None
        except aiohttp.ClientConnectionError as exc:
            raise TransportFailure(CONNECTION_ERROR, str(exc) or type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise TransportFailure(CLIENT_ERROR, str(exc) or type(exc).__name__) from None


class HttpxTransport(Transport):
    name = "httpx"

    async def open(self) -> None:
        import httpx

        self._httpx = httpx
        limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
        self._client = httpx.AsyncClient(limits=limits, timeout=self.timeout_s)

    async def close(self) -> None:
        await self._client.aclose()

    @property
    def version(self) -> str:
        import httpx

        return httpx.__version__

    async def post(self, url: str, body: bytes, content_type: str) -> tuple[int, int]:
        httpx = self._httpx
        try:
            response = await self._client.post(url, content=body, headers={"Content-Type": content_type})
        except httpx.TimeoutException as exc:
            raise TransportFailure(TIMEOUT, str(exc) or type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise TransportFailure(CONNECTION_ERROR, str(exc) or type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise TransportFailure(CLIENT_ERROR, str(exc) or type(exc).__name__) from None
        return response.status_code, len(response.content)


TRANSPORTS: dict[str, type[Transport]] = {"aiohttp": AiohttpTransport, "httpx": HttpxTransport}


def make_transport(name: str, connections: int, timeout_s: float) -> Transport:
    """``name``: aiohttp, httpx, or auto (aiohttp when installed: it costs less CPU per request, see
    docs/benchmarks.md; httpx is always installed with the service)."""
    if name == "auto":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            name = "httpx"
        else:
            name = "aiohttp"
    if name not in TRANSPORTS:
        raise ValueError(f"unknown HTTP client {name!r}; choose from auto, {', '.join(TRANSPORTS)}")
    return TRANSPORTS[name](connections, timeout_s)


@dataclass(frozen=True)
class Sample:
    """One request. Times are ``time.monotonic()`` seconds."""

    scheduled: float  # when it was due (closed loop: when it was sent)
    started: float
    ended: float
    status: int | str  # HTTP status, or TIMEOUT / CONNECTION_ERROR / CLIENT_ERROR / CLIENT_OVERFLOW
    sent: int
    received: int

    @property
    def latency_s(self) -> float:
        return self.ended - self.scheduled


@dataclass
class Recorder:
    """Samples of one step, with running counts that a progress display may read at any time."""

    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    errors: int = 0

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        self.done += 1
        self.errors += sample.status != OK


@dataclass(frozen=True)
class Target:
    url: str  # the full URL of the segment endpoint, query included
    payloads: Sequence[Payload]


async def _send(transport: Transport, target: Target, payload: Payload, scheduled: float) -> Sample:
    started = time.monotonic()
    try:
        status, received = await transport.post(target.url, payload.body, payload.content_type)
    except TransportFailure as failure:
        status, received = failure.kind, 0
    return Sample(scheduled, started, time.monotonic(), status, len(payload.body), received)


@dataclass(frozen=True)
class Window:
    """The measurement window of a step, in ``time.monotonic()`` seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def plan_window(warmup_s: float, duration_s: float) -> Window:
    start = time.monotonic() + warmup_s
    return Window(start, start + duration_s)


async def closed_loop(
    transport: Transport, target: Target, concurrency: int, window: Window, recorder: Recorder
) -> None:
    """``concurrency`` workers send back to back until the window ends; returns when all are answered."""
    if concurrency < 1:
        raise ValueError("concurrency must be ≥ 1")
    counter = itertools.count()
    payloads = target.payloads

    async def worker() -> None:
        while (now := time.monotonic()) < window.end:
            sample = await _send(transport, target, payloads[next(counter) % len(payloads)], now)
            recorder.add(sample)
            if sample.status == CONNECTION_ERROR:  # the server is gone: do not spin on refused connections
                await asyncio.sleep(CONNECTION_ERROR_BACKOFF_S)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def open_loop(
    transport: Transport,
    target: Target,
    rate: float,
    window: Window,
    recorder: Recorder,
    *,
    seed: int = 0,
    max_inflight: int = 1024,
) -> None:
    """Poisson arrivals at ``rate`` per second from now until the window ends; returns when all are
    answered. Beyond ``max_inflight`` outstanding requests an arrival is recorded as CLIENT_OVERFLOW."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    rng = random.Random(seed)
    payloads = target.payloads
    pending: set[asyncio.Task[None]] = set()
    due = time.monotonic()
    loop = asyncio.get_running_loop()

    async def one(payload: Payload, scheduled: float) -> None:
        recorder.add(await _send(transport, target, payload, scheduled))

    for index in itertools.count():
        due += rng.expovariate(rate)
        if due >= window.end:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_inflight:
            recorder.add(Sample(due, due, due, CLIENT_OVERFLOW, 0, 0))
            continue
        task = loop.create_task(one(payloads[index % len(payloads)], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)


# --- statistics ---------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | None]:
    """p50 / p90 / p95 / p99 / max / mean / min in milliseconds (None without values)."""
    keys = [f"p{q}" for q in PERCENTILES] + ["max", "mean", "min"]
    if not latencies_s:
        return dict.fromkeys(keys)
    values = sorted(latencies_s)
    summary: dict[str, float | None] = {f"p{q}": round(percentile(values, q) * MS, 3) for q in PERCENTILES}
    summary["max"] = round(values[-1] * MS, 3)
    summary["mean"] = round(sum(values) / len(values) * MS, 3)
    summary["min"] = round(values[0] * MS, 3)
    return summary


def summarize(samples: Sequence[Sample], window: Window, images_per_request: int = 1) -> dict[str, Any]:
    """The client-side numbers of one step: throughput, latency, errors by status, bytes."""
    measured = [s for s in samples if window.start <= s.scheduled < window.end]
    ok = [s for s in measured if s.status == OK]
    answered_in_window = sum(1 for s in samples if s.status == OK and window.start <= s.ended <= window.end)
    errors = Counter(str(s.status) for s in measured if s.status != OK)
    lags = sorted(s.started - s.scheduled for s in measured if s.status != CLIENT_OVERFLOW)
    seconds = window.seconds
    return {
        "duration_s": round(seconds, 3),
        "requests": len(measured),
        "successes": len(ok),
        "images_per_s": round(answered_in_window * images_per_request / seconds, 3),
        "requests_per_s": round(answered_in_window / seconds, 3),
        "offered_requests_per_s": round(len(measured) / seconds, 3),
        "latency_ms": latency_summary([s.latency_s for s in ok]),
        "errors": dict(sorted(errors.items())),
        "error_rate": round(sum(errors.values()) / len(measured), 6) if measured else 0.0,
        "bytes_sent": sum(s.sent for s in measured),
        "bytes_received": sum(s.received for s in measured),
        "send_lag_ms_p99": round(percentile(lags, 99) * MS, 3) if lags else None,
        "warmup_requests": sum(1 for s in samples if s.scheduled < window.start),
    }


ProgressFn = Callable[[Recorder, Window], None]
