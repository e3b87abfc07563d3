"""The soak tool against a real server (toy model, ``--tracemalloc``): a short run with every kind of request.

No timed assertions (DESIGN §8): the report's content and the server's behaviour (statuses, readiness, the
same answer before and after, memory samples), never speeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from faseg.bench.service_bench import ServerProcess
from faseg.loadtest.images import synthetic
from faseg.loadtest.soak import SCHEMA, SoakConfig, memory_trend, run

SOAK_S = 8.0
CAPACITY_S = 3.0


@pytest.fixture(scope="module")
def traced_server(toy_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("soak") / "server.log"
    server = ServerProcess(toy_onnx, ["--tracemalloc", "--max-queue-size", "4", "--decode-threads", "2"], log)
    with server:
        yield server


def test_short_soak_reports_every_outcome(traced_server: ServerProcess, tmp_path: Path) -> None:
    assert traced_server.process is not None
    payloads = [*synthetic(1, (320, 240)), *synthetic(1, (33, 400), seed=1), *synthetic(1, (640, 480), seed=2)]
    config = SoakConfig(
        url=traced_server.url,
        payloads=payloads,
        duration_s=SOAK_S,
        multiple=3.0,
        clients=8,
        capacity_s=CAPACITY_S,
        capacity_clients=2,
        valid_fraction=0.6,
        hostile_fraction=0.2,
        abandoned_fraction=0.2,
        abandon_after_ms=20,
        ignore_retry_after=True,
        sample_interval_s=0.5,
        server_pid=traced_server.process.pid,
    )
    report = run(config)
    json.dumps(report)  # the report is plain JSON
    assert report["schema"] == SCHEMA
    soak = report["soak"]
    statuses = soak["statuses"]
    assert statuses["valid"].get("200", 0) > 0 and soak["valid_goodput_per_s"] > 0
    hostile = statuses["hostile"]
    assert set(hostile) <= {"400", "413", "415", "429"}, hostile  # never a 5xx nor a hang
    assert {"400", "413", "415"} & set(hostile)
    assert statuses["abandoned"] == {"abandoned": statuses["abandoned"]["abandoned"]}
    assert soak["server_errors_5xx"] == 0
    assert report["capacity"]["valid_goodput_per_s"] > 0 and report["checks"]["goodput_ratio"] is not None
    assert soak["valid_latency_ms"]["p50"] is not None and soak["valid_latency_ms"]["p99"] is not None
    for side in ("server_cpu", "client_cpu"):
        assert soak[side]["ms_per_request"] > 0
    checks = report["checks"]
    assert checks["ready_after"] and checks["same_answer"]
    assert report["before"]["answer"]["stats"]  # the known answer is a real one
    assert checks["rss"]["start_mb"] > 0 and checks["rss"]["peak_mb"] >= checks["rss"]["end_mb"]
    assert checks["python_heap"] is not None and 0 < checks["python_heap"]["end_mb"] < checks["rss"]["end_mb"]
    samples = report["samples"]
    assert len(samples) >= SOAK_S / 0.5 / 2
    assert samples[-1]["requests"] <= soak["requests"]
    assert all("rss_mb" in s and "server_cpu_s" in s for s in samples)


def test_memory_trend_from_the_baseline_to_the_end() -> None:
    samples = [{"t_s": t, "rss_mb": 100.0 if t < 5 else 200.0 + t} for t in range(0, 100)]
    trend = memory_trend(samples, "rss_mb", baseline_s=5)
    assert trend is not None
    # 95 samples from the baseline on, a tenth is 9: t = 5 … 13 and t = 91 … 99
    assert trend["start_mb"] == 209.0
    assert trend["end_mb"] == 295.0
    assert trend["growth_percent"] == round(100 * (295.0 - 209.0) / 209.0, 2)
    assert trend["peak_mb"] == 299.0
    assert memory_trend([{"t_s": 0, "rss_mb": 1.0}], "rss_mb", 5) is None
