"""Soak and overload: a long run of mixed traffic at a multiple of the server's measured capacity.

Order of a run:
  1. before: ``GET /readyz`` and a known answer (one image's ``stats`` and ``rle``);
  2. capacity: ``capacity_clients`` closed-loop clients send valid requests only for ``capacity_s``; valid
     requests answered 200 per second is the capacity (and the goodput the soak is compared with);
  3. soak: ``clients`` paced clients together offer ``multiple`` × capacity requests/s for ``duration_s``, a
     mix of valid (JPEGs of several sizes; outputs stats / rle / png / overlay in turn), hostile (bytes that are
     no image, wrong content types, a ``Content-Length`` of 10 GB) and abandoned requests (the client closes
     its connection ``abandon_after_ms`` after sending). A client answered 429 / 503 with ``Retry-After``
     waits that long unless ``ignore_retry_after``; a client behind its schedule sends at once (no backlog);
     every ``sample_interval_s`` the server's RSS and CPU time are read from ``/proc/<pid>`` (when its pid is
     known) and ``/metrics`` is scraped (Python heap with ``--tracemalloc``, resident bytes otherwise);
  4. after: readiness and the known answer again, which must match.

The client speaks HTTP/1.1 itself over asyncio streams (one keep-alive connection per client): hostile and
abandoned requests need control no HTTP library gives, and a lean client leaves more of a shared machine to
the server. Its own CPU time is reported beside the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .client import latency_summary
from .images import Payload
from .raw_http import Answer, Connection, request_head
from .report import environment

SCHEMA = "faseg.soak/1"
OUTPUT_SETS = ("stats", "rle", "png", "overlay")
HOSTILE_KINDS = ("bad_bytes", "wrong_type", "huge_declared")
HUGE_DECLARED_BYTES = 10 * 1024**3
CONTROL_TIMEOUT_S = 10.0
READ_LIMIT = 64 * 1024 * 1024
MB = 1024 * 1024
# The known answer: the fields that must not change between before and after.
KNOWN_ANSWER_FIELDS = ("stats", "rle")


class SoakError(RuntimeError):
    """The server cannot be reached or is not ready before the run."""


@dataclass
class SoakConfig:
    url: str
    payloads: Sequence[Payload]  # valid images, sent in turn
    duration_s: float = 60.0
    multiple: float = 2.0  # offered load, × the measured capacity
    clients: int = 128
    capacity_s: float = 10.0
    capacity_clients: int = 4
    capacity_rps: float | None = None  # given: skip the measurement
    valid_fraction: float = 0.8
    hostile_fraction: float = 0.1
    abandoned_fraction: float = 0.1
    abandon_after_ms: float = 50.0
    ignore_retry_after: bool = False
    timeout_s: float = 30.0
    sample_interval_s: float = 1.0
    rss_baseline_s: float = 300.0  # RSS growth is measured from here (minute 5) to the end
    server_pid: int | None = None
    api_key: str | None = None
    seed: int = 0
    outputs: Sequence[str] = OUTPUT_SETS
    progress: Any = None  # a text stream for one line per sample, or None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the soak client speaks plain http: give http://host:port, not {self.url!r}")
        fractions = (self.valid_fraction, self.hostile_fraction, self.abandoned_fraction)
        if min(fractions) < 0 or self.valid_fraction <= 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"the valid / hostile / abandoned fractions must be ≥ 0 and sum to 1, not {fractions}")
        if self.duration_s <= 0 or self.multiple <= 0 or self.clients < 1 or self.capacity_clients < 1:
            raise ValueError("duration, multiple, clients and capacity clients must be positive")
        if not self.payloads:
            raise ValueError("no valid images to send")
        self.host = parts.hostname
        self.port = parts.port or 80


# --- a minimal HTTP/1.1 client ----------------------------------------------------------------------------


# --- traffic ------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes by kind and status, valid latencies and the time of every valid success."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    valid_latencies_s: list[float] = field(default_factory=list)
    valid_ok_times: list[float] = field(default_factory=list)
    retry_after_waits: int = 0

    def add(self, kind: str, status: int | str, started: float, ended: float) -> None:
        self.counts[kind, str(status)] += 1
        if kind == "valid" and status == 200:
            self.valid_latencies_s.append(ended - started)
            self.valid_ok_times.append(ended)

    def requests(self) -> int:
        return sum(self.counts.values())

    def by_kind(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (kind, status), n in sorted(self.counts.items()):
            table.setdefault(kind, {})[status] = n
        return table


class Traffic:
    """What a client sends next, and how it sends it."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self._valid = itertools.count()
        self._hostile = itertools.count()
        self._paths = [f"/v1/segment?outputs={o}" for o in config.outputs]

    def pick(self, rng: random.Random) -> str:
        x = rng.random()
        if x < self.config.valid_fraction:
            return "valid"
        return "hostile" if x < self.config.valid_fraction + self.config.hostile_fraction else "abandoned"

    def valid_request(self) -> tuple[bytes, bytes]:
        index = next(self._valid)
        payload = self.config.payloads[index % len(self.config.payloads)]
        path = self._paths[index % len(self._paths)]
        return request_head(self.config, "POST", path, payload.content_type, len(payload.body)), payload.body

    async def send(self, kind: str, connection: Connection) -> Answer | str:
        """The answer, or what happened instead (timeout, connection_error, abandoned)."""
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if kind == "valid":
                    return await connection.request(*self.valid_request())
                if kind == "hostile":
                    return await self._hostile_request()
                return await self._abandon()
        except TimeoutError:
            return "timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            return "connection_error"

    async def _hostile_request(self) -> Answer:
        """On a connection of its own: the server may close it (413 and 408 do)."""
        config = self.config
        kind = HOSTILE_KINDS[next(self._hostile) % len(HOSTILE_KINDS)]
        jpeg = config.payloads[0]
        if kind == "bad_bytes":
            body = os.urandom(2048)
            head = request_head(config, "POST", "/v1/segment", "image/jpeg", len(body))
        elif kind == "wrong_type":
            body = jpeg.body
            head = request_head(config, "POST", "/v1/segment", "image/gif", len(body))
        else:
            body = jpeg.body[:1024]  # then nothing: the server must answer from the declared length
            head = request_head(config, "POST", "/v1/segment", "image/jpeg", HUGE_DECLARED_BYTES)
        connection = Connection(config)
        try:
            return await connection.request(head, body)
        finally:
            await connection.close()

    async def _abandon(self) -> str:
        head, body = self.valid_request()
        _, writer = await asyncio.open_connection(self.config.host, self.config.port)
        try:
            writer.write(head + body)
            await writer.drain()
            await asyncio.sleep(self.config.abandon_after_ms / 1000)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return "abandoned"


# --- server observation ---------------------------------------------------------------------------------


def proc_sample(pid: int) -> dict[str, float] | None:
    """RSS (MB) and CPU seconds of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"rss_mb": rss / MB, "cpu_s": cpu}


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def metric_values(text: str, names: Sequence[str]) -> dict[str, float]:
    """Unlabelled samples of ``names`` in Prometheus text."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    return found


async def control(config: SoakConfig, method: str, path: str, body: bytes = b"", content_type: str | None = None):
    connection = Connection(config)
    try:
        async with asyncio.timeout(CONTROL_TIMEOUT_S):
            head = request_head(config, method, path, content_type, len(body) if method == "POST" else None)
            return await connection.request(head, body)
    finally:
        await connection.close()


async def known_answer(config: SoakConfig) -> dict[str, Any]:
    """Readiness and one image's stats + rle."""
    try:
        ready = (await control(config, "GET", "/readyz")).status
        payload = config.payloads[0]
        answer = await control(config, "POST", "/v1/segment?outputs=stats,rle", payload.body, payload.content_type)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise SoakError(f"cannot reach {config.url}: {type(exc).__name__}: {exc}") from None
    fields = json.loads(answer.body) if answer.status == 200 else {}
    return {"ready": ready, "status": answer.status, "answer": {k: fields.get(k) for k in KNOWN_ANSWER_FIELDS}}


class Sampler:
    """Every ``sample_interval_s``: the server's RSS and CPU (/proc), its memory metrics, the client's CPU, and
    the traffic so far."""

    METRICS = ("faseg_process_resident_bytes", "faseg_python_heap_bytes", "faseg_ready")

    def __init__(self, config: SoakConfig, tally: Tally) -> None:
        self.config = config
        self.tally = tally
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()

    async def run(self, until: float) -> None:
        while True:
            await self.sample()
            if time.monotonic() >= until:
                return
            await asyncio.sleep(min(self.config.sample_interval_s, max(0.0, until - time.monotonic())))

    async def sample(self) -> None:
        now = time.monotonic()
        sample: dict[str, Any] = {"t_s": round(now - self.started, 2), "client_cpu_s": round(client_cpu_s(), 3)}
        if self.config.server_pid is not None and (proc := proc_sample(self.config.server_pid)) is not None:
            sample["rss_mb"] = round(proc["rss_mb"], 2)
            sample["server_cpu_s"] = round(proc["cpu_s"], 3)
        try:
            values = metric_values((await control(self.config, "GET", "/metrics")).body.decode(), self.METRICS)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            values = {}
        if "faseg_python_heap_bytes" in values:
            sample["python_heap_mb"] = round(values["faseg_python_heap_bytes"] / MB, 2)
        if "rss_mb" not in sample and "faseg_process_resident_bytes" in values:
            sample["rss_mb"] = round(values["faseg_process_resident_bytes"] / MB, 2)
        sample["ready"] = values.get("faseg_ready")
        sample["requests"] = self.tally.requests()
        sample["valid_ok"] = len(self.tally.valid_ok_times)
        self.samples.append(sample)
        if self.config.progress is not None:
            rss = sample.get("rss_mb")
            heap = sample.get("python_heap_mb")
            self.config.progress.write(
                f"t={sample['t_s']:7.1f} s  requests {sample['requests']:8d}  valid ok {sample['valid_ok']:7d}  "
                f"rss {rss if rss is not None else '-'} MB  python heap {heap if heap is not None else '-'} MB\n"
            )
            self.config.progress.flush()


# --- phases -----------------------------------------------------------------------------------------------


async def measure_capacity(config: SoakConfig, traffic: Traffic) -> dict[str, Any]:
    """Closed loop, valid requests only: answered-200 per second, and CPU per request on both sides."""
    tally = Tally()
    end = time.monotonic() + config.capacity_s
    server_before = proc_sample(config.server_pid) if config.server_pid is not None else None
    client_before = client_cpu_s()
    started = time.monotonic()

    async def worker() -> None:
        connection = Connection(config)
        try:
            while time.monotonic() < end:
                t0 = time.monotonic()
                answer = await traffic.send("valid", connection)
                tally.add("valid", answer.status if isinstance(answer, Answer) else answer, t0, time.monotonic())
        finally:
            await connection.close()

    await asyncio.gather(*(worker() for _ in range(config.capacity_clients)))
    seconds = time.monotonic() - started
    result = _phase_summary(tally, seconds, server_before, client_before, config)
    result["clients"] = config.capacity_clients
    return result


async def soak(config: SoakConfig, traffic: Traffic, rate: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tally = Tally()
    sampler = Sampler(config, tally)
    start = time.monotonic()
    end = start + config.duration_s
    interval = config.clients / rate  # each client's share of the offered rate
    server_before = proc_sample(config.server_pid) if config.server_pid is not None else None
    client_before = client_cpu_s()

    async def client(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)
        due = start + rng.uniform(0, interval)
        connection = Connection(config)
        try:
            while True:
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                if time.monotonic() >= end:
                    return
                kind = traffic.pick(rng)
                t0 = time.monotonic()
                answer = await traffic.send(kind, connection)
                t1 = time.monotonic()
                tally.add(kind, answer.status if isinstance(answer, Answer) else answer, t0, t1)
                due = max(due + interval, t1)  # behind schedule: send now, without a backlog
                if isinstance(answer, Answer) and not config.ignore_retry_after and "retry-after" in answer.headers:
                    with contextlib.suppress(ValueError):
                        due = max(due, t1 + float(answer.headers["retry-after"]))
                        tally.retry_after_waits += 1
        finally:
            await connection.close()

    sampling = asyncio.get_running_loop().create_task(sampler.run(end))
    await asyncio.gather(*(client(i) for i in range(config.clients)))
    await sampling
    result = _phase_summary(tally, time.monotonic() - start, server_before, client_before, config)
    result["offered_requests_per_s"] = round(rate, 3)
    result["clients"] = config.clients
    result["retry_after_waits"] = tally.retry_after_waits
    return result, sampler.samples


def _phase_summary(
    tally: Tally, seconds: float, server_before: dict[str, float] | None, client_before: float, config: SoakConfig
) -> dict[str, Any]:
    requests = tally.requests()
    valid_ok = len(tally.valid_ok_times)
    by_kind = tally.by_kind()
    server_errors = sum(n for (_, status), n in tally.counts.items() if status.isdigit() and int(status) >= 500)
    summary: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "requests": requests,
        "requests_per_s": round(requests / seconds, 3) if seconds else 0.0,  # sent; below offered when clients wait
        "statuses": by_kind,
        "server_errors_5xx": server_errors,
        "server_errors_5xx_other_than_503": sum(
            n for (_, status), n in tally.counts.items() if status.isdigit() and int(status) >= 500 and status != "503"
        ),
        "valid_ok": valid_ok,
        "valid_goodput_per_s": round(valid_ok / seconds, 3) if seconds else 0.0,
        "valid_latency_ms": latency_summary(tally.valid_latencies_s),
    }
    client_cpu = client_cpu_s() - client_before
    summary["client_cpu"] = _cpu(client_cpu, requests, valid_ok)
    if server_before is not None and config.server_pid is not None:
        after = proc_sample(config.server_pid)
        if after is not None:
            summary["server_cpu"] = _cpu(after["cpu_s"] - server_before["cpu_s"], requests, valid_ok)
    return summary


def _cpu(seconds: float, requests: int, valid_ok: int) -> dict[str, float | None]:
    return {
        "seconds": round(seconds, 3),
        "ms_per_request": round(seconds * 1000 / requests, 3) if requests else None,
        "ms_per_valid_ok": round(seconds * 1000 / valid_ok, 3) if valid_ok else None,
    }


def memory_trend(samples: Sequence[dict[str, Any]], key: str, baseline_s: float) -> dict[str, Any] | None:
    """Growth of ``key`` from ``baseline_s`` to the end: median of the first tenth of the samples after the
    baseline vs median of the last tenth (at least one sample each), and the peak."""
    points = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if len(points) < 2:
        return None
    after = [v for t, v in points if t >= baseline_s] or [v for _, v in points]
    n = max(1, len(after) // 10)
    start, end = statistics.median(after[:n]), statistics.median(after[-n:])
    return {
        "baseline_s": baseline_s,
        "start_mb": round(start, 2),
        "end_mb": round(end, 2),
        "growth_percent": round(100 * (end - start) / start, 2) if start else None,
        "peak_mb": round(max(v for _, v in points), 2),
    }


async def run_async(config: SoakConfig) -> dict[str, Any]:
    env = environment()
    traffic = Traffic(config)
    before = await known_answer(config)
    if before["ready"] != 200 or before["status"] != 200:
        raise SoakError(f"the server is not ready before the run: /readyz {before['ready']}, answer {before['status']}")
    capacity = None
    rate = config.capacity_rps
    if rate is None:
        capacity = await measure_capacity(config, traffic)
        rate = capacity["valid_goodput_per_s"] / config.valid_fraction  # requests/s whose valid part is capacity
        if rate <= 0:
            raise SoakError("the capacity measurement got no valid answer")
    soak_result, samples = await soak(config, traffic, rate * config.multiple)
    after = await known_answer(config)
    baseline = min(config.rss_baseline_s, config.duration_s / 5)
    goodput_at_capacity = capacity["valid_goodput_per_s"] if capacity else None
    sizes = sorted({len(p.body) for p in config.payloads})
    return {
        "schema": SCHEMA,
        "environment": env,
        "settings": {
            "url": config.url,
            "duration_s": config.duration_s,
            "multiple": config.multiple,
            "clients": config.clients,
            "ignore_retry_after": config.ignore_retry_after,
            "mix": {
                "valid": config.valid_fraction,
                "hostile": config.hostile_fraction,
                "abandoned": config.abandoned_fraction,
            },
            "abandon_after_ms": config.abandon_after_ms,
            "outputs": list(config.outputs),
            "images": {"count": len(config.payloads), "bytes": sizes, "names": [p.name for p in config.payloads]},
            "capacity_s": config.capacity_s,
            "capacity_clients": config.capacity_clients,
            "server_pid_known": config.server_pid is not None,
        },
        "before": before,
        "capacity": capacity,
        "soak": soak_result,
        "after": after,
        "checks": {
            "ready_after": after["ready"] == 200,
            "same_answer": after["answer"] == before["answer"] and after["status"] == 200,
            "goodput_ratio": round(soak_result["valid_goodput_per_s"] / goodput_at_capacity, 3)
            if goodput_at_capacity
            else None,
            "rss": memory_trend(samples, "rss_mb", baseline),
            "python_heap": memory_trend(samples, "python_heap_mb", baseline),
        },
        "samples": samples,
    }


def run(config: SoakConfig) -> dict[str, Any]:
    return asyncio.run(run_async(config))
