"""`faseg bench service`: the parity run — one model through the raw backend and through our HTTP service,
measured side by side in one run, giving the service's overhead as a ratio (like LitServe's
``tests/parity_fastapi``).

Order of a run (the development machines are shared, so every comparison is interleaved or bracketed):
  1. the raw backend is loaded in this process exactly as the server loads it (``Settings`` →
     ``load_backend``) and fed the same images the load test sends, decoded and letterboxed by the
     service's own code; it is timed at every batch size 1 … ``max_batch_size`` (rounds, median);
  2. two servers (``python -m faseg.service``) start on free loopback ports: one with dynamic batching
     (``--max-batch-size``), one with ``--max-batch-size 1``; an idle server uses no CPU;
  3. paired latency: rounds of sequential HTTP requests (concurrency 1) alternating with raw batch-1 runs
     on the same images;
  4. a closed-loop concurrency sweep (``faseg.loadtest``) against the batching server;
  5. paired throughput: rounds of HTTP at the sweep's best concurrency alternating with the raw backend
     at the batch size the server formed in that round;
  6. the effect of dynamic batching: the highest concurrency, alternating between the two servers;
  7. the raw backend timed again; the raw table used is the mean of before and after.

Ratios: HTTP images/s at the best concurrency ÷ raw images/s at the mean batch size the server actually
formed there (interpolated between the neighbouring batch sizes; median of the paired rounds; target
≥ 0.9); paired HTTP p50 at
concurrency 1 − raw batch-1 p50 (target ≤ 15 ms); HTTP images/s at the highest concurrency with batching ÷
with ``max_batch_size=1`` (medians of the rounds). The load generator runs on the same machine: its CPU
use is part of the measurement and is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from faseg.loadtest import LoadTestConfig, write_report
from faseg.loadtest import run as run_loadtest
from faseg.loadtest.client import make_transport
from faseg.loadtest.images import Payload
from faseg.loadtest.report import environment

from .raw_backend import RawBackend, server_inputs
from .server_process import DEFAULT_SERVER_ARGS, ServerProcess, free_port, stop_process

SCHEMA = "faseg.bench.service/1"
TARGET_THROUGHPUT_RATIO = 0.9
TARGET_P50_OVERHEAD_MS = 15.0
CONFIDENCE = 0.9  # of the interval given for the median paired throughput ratio


async def _paired_latency(
    raw: RawBackend, url: str, payloads: Sequence[Payload], rounds: int, per_round: int, outputs: str, client: str
) -> dict[str, Any]:
    """Alternate ``per_round`` sequential HTTP requests (concurrency 1) with ``per_round`` raw batch-1 runs
    on the same images, ``rounds`` times: drift from other load on the machine hits both alike."""
    target = f"{url}/v1/segment?outputs={outputs}"
    http_s: list[float] = []
    raw_s: list[float] = []
    failures = 0
    async with make_transport(client, 1, 60.0) as transport:
        for index in range(2):  # warm the connection and the server's pools
            payload = payloads[index % len(payloads)]
            await transport.post(target, payload.body, payload.content_type)
        for _ in range(rounds):
            for index in range(per_round):
                payload = payloads[index % len(payloads)]
                started = time.perf_counter()
                status, _ = await transport.post(target, payload.body, payload.content_type)
                elapsed = time.perf_counter() - started
                if status == 200:
                    http_s.append(elapsed)
                else:
                    failures += 1
            for index in range(per_round):
                images = raw.batch(1, offset=index)
                started = time.perf_counter()
                raw.backend.infer(images)
                raw_s.append(time.perf_counter() - started)
    http_p50 = statistics.median(http_s) * 1000.0 if http_s else None
    raw_p50 = statistics.median(raw_s) * 1000.0
    return {
        "rounds": rounds,
        "per_round": per_round,
        "http_p50_ms": round(http_p50, 3) if http_p50 is not None else None,
        "raw_p50_ms": round(raw_p50, 3),
        "overhead_ms": round(http_p50 - raw_p50, 3) if http_p50 is not None else None,
        "http_failures": failures,
        "http_ms": [round(v * 1000.0, 3) for v in http_s],
        "raw_ms": [round(v * 1000.0, 3) for v in raw_s],
    }


def interpolate(per_batch: dict[int, float], batch: float) -> float:
    """Linear interpolation of a per-batch-size value at a fractional batch size (clamped to the range)."""
    sizes = sorted(per_batch)
    batch = min(max(batch, sizes[0]), sizes[-1])
    low, high = math.floor(batch), math.ceil(batch)
    if low == high or high not in per_batch:
        return per_batch[low]
    return per_batch[low] + (per_batch[high] - per_batch[low]) * (batch - low)


def median_confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any] | None:
    """Distribution-free interval for the median: the order statistics x_(k) and x_(n+1-k), with k the largest
    for which two binomial(n, ½) tails of k − 1 stay within 1 − ``confidence`` (so coverage ≥ ``confidence``).
    None when there are too few values for any k ≥ 1."""
    from scipy.stats import binom

    ordered = sorted(values)
    n = len(ordered)
    k = 0
    while k + 1 <= n // 2 and 2 * binom.cdf(k, n, 0.5) <= 1 - confidence:
        k += 1
    if k == 0:
        return None
    coverage = 1.0 - 2.0 * float(binom.cdf(k - 1, n, 0.5))
    return {"low": round(ordered[k - 1], 4), "high": round(ordered[n - k], 4), "coverage": round(coverage, 4), "n": n}


def _merge_raw(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> dict[int, dict[str, float]]:
    merged = {}
    for b in before:
        ms = statistics.fmean([before[b]["median_ms"], after[b]["median_ms"]])
        images = b * before[b].get("instances", 1)  # a timed run holds one batch per instance
        merged[b] = {"median_ms": round(ms, 3), "images_per_s": round(images / ms * 1000.0, 3)}
        if "cpu_ms_per_image" in before[b] and "cpu_ms_per_image" in after[b]:
            cpu = statistics.fmean([before[b]["cpu_ms_per_image"], after[b]["cpu_ms_per_image"]])
            merged[b]["cpu_ms_per_image"] = round(cpu, 3)
    return merged


def _step(report: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    return next((s for s in report["steps"] if s["concurrency"] == concurrency), None)


def compare(
    raw: dict[int, dict[str, float]],
    sweep: dict[str, Any],
    paired: dict[str, Any] | None = None,
    batching: list[dict[str, Any]] | None = None,
    throughput_pairs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The parity ratios and whether the targets are met.

    ``raw``: batch size → mean raw latency / images/s; ``sweep``: the loadtest report of the batching
    server; ``paired``: the interleaved concurrency-1 latencies; ``batching``: alternating rounds of the
    highest concurrency with and without batching (``{"with": step, "without": step}`` each);
    ``throughput_pairs``: alternating rounds of HTTP at the best concurrency and the raw backend
    (``{"ratio": ...}`` each), which replace the sweep-based throughput ratio when given."""
    steps = sweep["steps"]
    best = max(steps, key=lambda s: s["images_per_s"])
    mean_batch = (best.get("server") or {}).get("mean_batch_size") or 1.0
    raw_ips = {b: row["images_per_s"] for b, row in raw.items()}
    raw_at_batch = interpolate(raw_ips, mean_batch)
    sweep_ratio = best["images_per_s"] / raw_at_batch if raw_at_batch else None
    throughput_ratio = sweep_ratio
    throughput_source = "sweep's best step vs raw table (before/after mean) at its mean batch size"
    ratio_ci = None
    if throughput_pairs:
        ratios = [pair["ratio"] for pair in throughput_pairs]
        throughput_ratio = statistics.median(ratios)
        ratio_ci = median_confidence_interval(ratios)
        throughput_source = (
            f"paired: median of {len(throughput_pairs)} rounds alternating HTTP at c={best['concurrency']} with "
            "the raw backend at the batch size the server formed in that round"
        )
    c1 = _step(sweep, 1)
    if paired is not None:
        p50_http, p50_raw, p50_overhead = paired["http_p50_ms"], paired["raw_p50_ms"], paired["overhead_ms"]
        p50_source = f"paired: {paired['rounds']} alternating rounds of {paired['per_round']} HTTP / raw runs"
    else:
        p50_http = c1["latency_ms"]["p50"] if c1 else None
        p50_raw = raw[1]["median_ms"]
        p50_overhead = round(p50_http - p50_raw, 3) if p50_http is not None else None
        p50_source = "sweep step c=1 vs raw batch-1 (before/after mean)"
    result: dict[str, Any] = {
        "best_concurrency": best["concurrency"],
        "http_images_per_s": best["images_per_s"],
        "server_mean_batch_size": mean_batch,
        "raw_images_per_s_at_that_batch": round(raw_at_batch, 3),
        "throughput_ratio": round(throughput_ratio, 4) if throughput_ratio is not None else None,
        "throughput_source": throughput_source,
        "throughput_ratio_ci": ratio_ci,
        "sweep_throughput_ratio": round(sweep_ratio, 4) if sweep_ratio is not None else None,
        "raw_best_images_per_s": max(raw_ips.values()),
        "throughput_ratio_vs_raw_best": round(best["images_per_s"] / max(raw_ips.values()), 4),
        "http_p50_ms_c1": p50_http,
        "raw_batch1_p50_ms": p50_raw,
        "p50_overhead_ms_c1": p50_overhead,
        "p50_source": p50_source,
        "sweep_c1_p50_ms": c1["latency_ms"]["p50"] if c1 else None,
    }
    targets = {
        f"throughput_ratio >= {TARGET_THROUGHPUT_RATIO}": (
            throughput_ratio is not None and throughput_ratio >= TARGET_THROUGHPUT_RATIO
        ),
        f"p50_overhead_ms_c1 <= {TARGET_P50_OVERHEAD_MS:g}": (
            p50_overhead is not None and p50_overhead <= TARGET_P50_OVERHEAD_MS
        ),
    }
    if batching:
        result["batching"] = _batching_effect(batching)
    cpu = _cpu_per_image(best, raw, mean_batch)
    if cpu is not None:
        result["cpu_per_image_ms"] = cpu
    result["targets_met"] = targets
    return result


def _batching_effect(batching: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the rounds at the highest concurrency with and without dynamic batching."""
    with_ips = [r["with"]["images_per_s"] for r in batching]
    without_ips = [r["without"]["images_per_s"] for r in batching]
    with_median, without_median = statistics.median(with_ips), statistics.median(without_ips)
    return {
        "concurrency": batching[0]["with"]["concurrency"],
        "rounds": len(batching),
        "images_per_s_with_batching": round(with_median, 3),
        "images_per_s_max_batch_size_1": round(without_median, 3),
        "mean_batch_size_with_batching": statistics.median(
            (r["with"].get("server") or {}).get("mean_batch_size") or 1.0 for r in batching
        ),
        "p50_ms_with_batching": statistics.median(r["with"]["latency_ms"]["p50"] or 0.0 for r in batching),
        "p50_ms_max_batch_size_1": statistics.median(r["without"]["latency_ms"]["p50"] or 0.0 for r in batching),
        "ratio": round(with_median / without_median, 4) if without_median else None,
        "per_round_images_per_s": [{"with": w, "without": o} for w, o in zip(with_ips, without_ips)],
    }


def _cpu_per_image(best: dict[str, Any], raw: dict[int, dict[str, float]], mean_batch: float) -> dict[str, Any] | None:
    """CPU per image of the server, the raw backend at the server's batch size and the client (None when the
    sweep or the raw table did not measure it)."""
    server_cpu = (best.get("server") or {}).get("process_cpu_ms_per_image")
    raw_cpu = {b: row["cpu_ms_per_image"] for b, row in raw.items() if "cpu_ms_per_image" in row}
    if server_cpu is None or not raw_cpu:
        return None
    model_cpu = interpolate(raw_cpu, mean_batch)
    client_cpu = (best.get("client") or {}).get("cpu_ms_per_image") or 0.0
    return {
        "server_process": server_cpu,
        "raw_backend_at_that_batch": round(model_cpu, 3),
        "service_overhead": round(server_cpu - model_cpu, 3),
        "client": client_cpu,
        # The share of the CPU spent per image that the raw backend spends too: a parity estimate that
        # other load on the machine disturbs less than wall-clock throughput (per-process accounting is
        # still only good to about ±10%: the raw backend's CPU per image varies with batch size and load).
        "raw_share": round(model_cpu / (server_cpu + client_cpu), 4),
    }


def _throughput_pair(
    raw: RawBackend, url: str, concurrency: int, load: dict[str, Any], duration_s: float
) -> dict[str, Any]:
    """One paired-throughput round: HTTP at ``concurrency``, then the raw backend at the batch size the server
    formed (interpolated between its neighbours)."""
    short = {**load, "duration_s": duration_s, "warmup_s": 0.5, "progress": None}
    [step] = run_loadtest(LoadTestConfig(url=url, levels=[concurrency], **short))["steps"]
    formed = (step.get("server") or {}).get("mean_batch_size") or 1.0
    sizes = sorted({math.floor(formed), math.ceil(formed)})
    raw_ips = {b: raw.throughput(b, duration_s / len(sizes)) for b in sizes}
    raw_at = interpolate(raw_ips, formed)
    return {
        "concurrency": concurrency,
        "http_images_per_s": step["images_per_s"],
        "mean_batch_size": formed,
        "raw_images_per_s": {str(b): round(v, 3) for b, v in raw_ips.items()},
        "raw_images_per_s_at_that_batch": round(raw_at, 3),
        "ratio": round(step["images_per_s"] / raw_at, 4),
    }


def run_service_bench(
    model: Path,
    payloads: Sequence[Payload],
    *,
    images: str,
    out_dir: Path,
    concurrency: Sequence[int] = (1, 2, 4, 8, 16),
    duration_s: float = 10.0,
    warmup_s: float = 2.0,
    max_batch_size: int = 8,
    compare_batching: bool = True,
    batching_rounds: int = 2,
    raw_runs: int = 5,
    paired_rounds: int = 5,
    paired_per_round: int = 10,
    throughput_rounds: int = 16,
    throughput_duration_s: float = 3.0,
    outputs: str = "stats",
    client: str = "auto",
    server_args: Sequence[str] = (),
    log: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()

    def say(message: str) -> None:
        if log:
            print(message, file=log, flush=True)

    load = dict(
        payloads=payloads,
        images=images,
        duration_s=duration_s,
        warmup_s=warmup_s,
        outputs=outputs,
        client=client,
        progress=log,
    )
    top = max(concurrency)
    batching_args = [*server_args, "--max-batch-size", str(max_batch_size)]
    raw = RawBackend(model, payloads, max_batch_size, server_args)
    rounds: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    try:
        say(f"raw backend (before): batch sizes 1..{max_batch_size}, {raw_runs} runs each")
        raw_before = raw.time_batches(raw_runs)
        with contextlib.ExitStack() as servers:
            batched = servers.enter_context(ServerProcess(model, batching_args, out_dir / "server.log"))
            single = None
            if compare_batching:  # idle while the other is measured: its model threads sleep (no spinning)
                single_args = [*server_args, "--max-batch-size", "1"]
                single = servers.enter_context(ServerProcess(model, single_args, out_dir / "server_mbs1.log"))
            say(f"paired latency: {paired_rounds} rounds of {paired_per_round} HTTP requests / raw runs")
            paired = asyncio.run(
                _paired_latency(raw, batched.url, payloads, paired_rounds, paired_per_round, outputs, client)
            )
            say(f"server, max_batch_size {max_batch_size}: concurrency {list(concurrency)}")
            sweep = run_loadtest(
                LoadTestConfig(url=batched.url, levels=list(concurrency), server_cpu=batched.cpu_seconds, **load)
            )
            write_report(sweep, out_dir / "sweep")
            best = max(sweep["steps"], key=lambda st: st["images_per_s"])
            for index in range(throughput_rounds):
                say(f"paired throughput round {index + 1}/{throughput_rounds}: HTTP c={best['concurrency']}, then raw")
                pair = _throughput_pair(raw, batched.url, best["concurrency"], load, throughput_duration_s)
                pairs.append(pair)
                say(
                    f"  HTTP {pair['http_images_per_s']:.2f} img/s (batch {pair['mean_batch_size']}) vs raw "
                    f"{pair['raw_images_per_s_at_that_batch']:.2f} img/s"
                )
            if single is not None:
                for index in range(batching_rounds):
                    say(
                        f"batching round {index + 1}/{batching_rounds}: c={top}, max_batch_size 1 then {max_batch_size}"
                    )
                    without = run_loadtest(LoadTestConfig(url=single.url, levels=[top], **load))
                    with_ = run_loadtest(LoadTestConfig(url=batched.url, levels=[top], **load))
                    rounds.append({"with": with_["steps"][0], "without": without["steps"][0]})
                    if index == 0:
                        write_report(without, out_dir / "no_batching")
        say("raw backend (after)")
        raw_after = raw.time_batches(raw_runs)
    finally:
        raw.close()
    merged = _merge_raw(raw_before, raw_after)
    env["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    return {
        "benchmark": "bench_service",
        "schema": SCHEMA,
        "environment": env,
        "model": {"path": str(model), **(sweep["target"].get("model") or {})},
        "settings": {
            "concurrency": list(concurrency),
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "max_batch_size": max_batch_size,
            "raw_runs": raw_runs,
            "paired_rounds": paired_rounds,
            "paired_per_round": paired_per_round,
            "throughput_rounds": throughput_rounds,
            "throughput_duration_s": throughput_duration_s,
            "batching_rounds": batching_rounds if compare_batching else 0,
            "outputs": outputs,
            "images": images,
            "client": sweep["tool"]["client"],
            "server_args": [*DEFAULT_SERVER_ARGS, *server_args],
            "note": "client, servers and raw backend share this machine's CPUs; raw batch table = mean of the "
            "runs before and after the HTTP phases; the idle server and the idle raw backend use no CPU",
        },
        "raw": {
            "before": {str(b): row for b, row in raw_before.items()},
            "after": {str(b): row for b, row in raw_after.items()},
            "mean": {str(b): row for b, row in merged.items()},
        },
        "paired_latency": paired,
        "http": {
            "sweep": sweep["steps"],
            "batching_rounds": rounds,
            "throughput_pairs": pairs,
        },
        "comparison": compare(merged, sweep, paired, rounds or None, pairs or None),
    }


__all__ = [  # the process and raw-backend helpers are re-exported: tests and benchmarks import them from here
    "RawBackend",
    "ServerProcess",
    "compare",
    "free_port",
    "interpolate",
    "median_confidence_interval",
    "run_service_bench",
    "server_inputs",
    "stop_process",
]
