"""Fast tests of the load generator's statistics, the /metrics breakdown, the report files, the model
benchmark (on the toy ONNX model), the parity ratios and the docs generator. No live server, no timing
assertions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from faseg.bench.model_bench import run_model_bench
from faseg.bench.service_bench import compare, interpolate, median_confidence_interval
from faseg.cli import main
from faseg.loadtest import check_report, write_report
from faseg.loadtest.client import CLIENT_OVERFLOW, Sample, Window, latency_summary, percentile, summarize
from faseg.loadtest.images import load_folder, parse_wxh, synthetic
from faseg.loadtest.metrics_scrape import breakdown, histogram_quantile, parse
from faseg.loadtest.report import REPORT_CSV, SCHEMA, summary

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("q", [0, 10, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    values = sorted(np.random.default_rng(1).exponential(size=101).tolist())
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_latency_summary_without_values_is_all_none() -> None:
    assert set(latency_summary([]).values()) == {None}
    assert latency_summary([0.010])["p99"] == 10.0


def _sample(scheduled: float, ended: float, status: int | str = 200) -> Sample:
    return Sample(scheduled, scheduled, ended, status, 100, 10)


def test_summarize_counts_the_window_only() -> None:
    window = Window(10.0, 12.0)
    samples = [
        _sample(9.5, 10.2),  # warm-up request answered inside the window: throughput yes, latency no
        _sample(10.0, 10.1),
        _sample(10.5, 10.8),
        _sample(11.0, 11.5, 429),
        _sample(11.8, 12.3),  # scheduled inside, answered after: latency yes, throughput no
        _sample(11.9, 11.9, CLIENT_OVERFLOW),
        _sample(12.0, 12.1),  # after the window
    ]
    step = summarize(samples, window)
    assert step["requests"] == 5
    assert step["successes"] == 3
    assert step["images_per_s"] == pytest.approx(3 / 2)  # 10.2, 10.1, 10.8
    assert step["errors"] == {"429": 1, CLIENT_OVERFLOW: 1}
    assert step["error_rate"] == pytest.approx(2 / 5)
    assert step["latency_ms"]["max"] == pytest.approx(500.0)
    assert step["warmup_requests"] == 1
    assert step["bytes_sent"] == 500


METRICS_BEFORE = """
# TYPE faseg_stage_duration_seconds histogram
faseg_stage_duration_seconds_bucket{le="0.01",stage="infer"} 2.0
faseg_stage_duration_seconds_bucket{le="0.1",stage="infer"} 4.0
faseg_stage_duration_seconds_bucket{le="+Inf",stage="infer"} 4.0
faseg_stage_duration_seconds_count{stage="infer"} 4.0
faseg_stage_duration_seconds_sum{stage="infer"} 0.1
# TYPE faseg_batch_size histogram
faseg_batch_size_bucket{le="1.0"} 2.0
faseg_batch_size_bucket{le="+Inf"} 2.0
faseg_batch_size_count 2.0
faseg_batch_size_sum 2.0
# TYPE faseg_requests counter
faseg_requests_total{code="200",endpoint="/v1/segment"} 4.0
# TYPE faseg_batches counter
faseg_batches_total 2.0
# TYPE faseg_inference_images counter
faseg_inference_images_total 4.0
"""

METRICS_AFTER = """
# TYPE faseg_stage_duration_seconds histogram
faseg_stage_duration_seconds_bucket{le="0.01",stage="infer"} 2.0
faseg_stage_duration_seconds_bucket{le="0.1",stage="infer"} 14.0
faseg_stage_duration_seconds_bucket{le="+Inf",stage="infer"} 14.0
faseg_stage_duration_seconds_count{stage="infer"} 14.0
faseg_stage_duration_seconds_sum{stage="infer"} 0.6
faseg_stage_duration_seconds_bucket{le="0.01",stage="decode"} 10.0
faseg_stage_duration_seconds_bucket{le="0.1",stage="decode"} 10.0
faseg_stage_duration_seconds_bucket{le="+Inf",stage="decode"} 10.0
faseg_stage_duration_seconds_count{stage="decode"} 10.0
faseg_stage_duration_seconds_sum{stage="decode"} 0.02
# TYPE faseg_batch_size histogram
faseg_batch_size_bucket{le="1.0"} 2.0
faseg_batch_size_bucket{le="+Inf"} 6.0
faseg_batch_size_count 6.0
faseg_batch_size_sum 12.0
# TYPE faseg_requests counter
faseg_requests_total{code="200",endpoint="/v1/segment"} 13.0
faseg_requests_total{code="429",endpoint="/v1/segment"} 1.0
# TYPE faseg_rejections counter
faseg_rejections_total{reason="queue_full"} 1.0
# TYPE faseg_batches counter
faseg_batches_total 6.0
# TYPE faseg_inference_images counter
faseg_inference_images_total 14.0
"""


def test_breakdown_is_the_difference_of_two_scrapes() -> None:
    result = breakdown(parse(METRICS_BEFORE), parse(METRICS_AFTER))
    infer = result["stages_ms"]["infer"]
    assert infer["count"] == 10
    assert infer["mean_ms"] == pytest.approx(50.0)  # (0.6 - 0.1) / 10
    assert 10.0 < infer["p50_ms"] <= 100.0  # all ten new observations fell in (0.01, 0.1]
    assert result["stages_ms"]["decode"]["count"] == 10  # a series absent before counts from zero
    assert result["mean_batch_size"] == pytest.approx(10 / 4)
    assert result["batches"] == 4 and result["images"] == 10
    assert result["requests_by_code"] == {"200": 9, "429": 1}
    assert result["rejections"] == {"queue_full": 1}


def test_histogram_quantile_like_prometheus() -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.99, [(0.1, 0.0), (float("inf"), 5.0)]) == 0.1  # beyond the last bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def _fake_step(concurrency: int, ips: float, batch: float | None = 1.0) -> dict:
    latency = {"p50": 10.0, "p90": 12.0, "p95": 13.0, "p99": 20.0, "max": 25.0, "mean": 11.0, "min": 8.0}
    server = None
    if batch is not None:
        server = {
            "stages_ms": {"infer": {"count": 3, "mean_ms": 5.0, "p50_ms": 5.0, "p99_ms": 9.0}},
            "mean_batch_size": batch,
            "batches": 3,
            "images": 3,
            "requests_by_code": {"200": 3},
            "rejections": {},
        }
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "rate": None,
        "duration_s": 1.0,
        "requests": 3,
        "successes": 3,
        "images_per_s": ips,
        "requests_per_s": ips,
        "offered_requests_per_s": ips,
        "latency_ms": latency,
        "errors": {},
        "error_rate": 0.0,
        "bytes_sent": 3,
        "bytes_received": 3,
        "send_lag_ms_p99": 0.1,
        "warmup_requests": 1,
        "client": {"cpu_seconds": 0.1, "cpu_percent": 10.0},
        "server": server,
    }


def _fake_report(steps: list[dict]) -> dict:
    return {
        "schema": SCHEMA,
        "tool": {"name": "faseg loadtest", "client": "test"},
        "environment": {"date": "2026-01-01"},
        "target": {"url": "http://127.0.0.1:1", "endpoint": "/v1/segment", "outputs": "stats", "model": None},
        "settings": {"mode": "closed", "levels": [s["concurrency"] for s in steps]},
        "steps": steps,
        "summary": summary(steps),
    }


def test_report_files_and_schema_check(tmp_path: Path) -> None:
    report = _fake_report([_fake_step(1, 10.0), _fake_step(2, 15.0, None)])
    assert check_report(report) == []
    assert report["summary"]["best_step"] == 1
    files = write_report(report, tmp_path)
    assert json.loads(Path(files["json"]).read_text())["steps"][1]["server"] is None
    assert len((tmp_path / REPORT_CSV).read_text().strip().splitlines()) == 3
    broken = json.loads(Path(files["json"]).read_text())
    del broken["steps"][0]["latency_ms"]["p99"]
    broken["steps"][1]["images_per_s"] = "fast"
    problems = check_report(broken)
    assert any("latency_ms.p99" in p for p in problems)
    assert any("steps[1].images_per_s" in p for p in problems)
    unordered = json.loads(Path(files["json"]).read_text())
    unordered["steps"][0]["latency_ms"]["p90"] = unordered["steps"][0]["latency_ms"]["max"] + 1.0
    assert any("min ≤ p50" in p for p in check_report(unordered))
    assert check_report({"schema": SCHEMA}) != []


def test_synthetic_images_are_deterministic_jpegs(tmp_path: Path) -> None:
    first, again = synthetic(2, (64, 48), seed=3), synthetic(2, (64, 48), seed=3)
    assert [p.body for p in first] == [p.body for p in again]
    assert first[0].body[:2] == b"\xff\xd8" and first[0].content_type == "image/jpeg"
    assert first[0].body != first[1].body
    assert parse_wxh("640x480") == (640, 480)
    with pytest.raises(ValueError):
        parse_wxh("640")
    (tmp_path / "a.jpg").write_bytes(first[0].body)
    (tmp_path / "notes.txt").write_text("not an image")
    [loaded] = load_folder(tmp_path)
    assert loaded.name == "a.jpg"
    with pytest.raises(FileNotFoundError):
        load_folder(tmp_path / "missing")


def test_parity_ratios() -> None:
    assert interpolate({1: 10.0, 2: 20.0, 4: 40.0}, 1.5) == pytest.approx(15.0)
    assert interpolate({1: 10.0, 2: 20.0}, 7.0) == 20.0  # clamped to the measured range
    raw = {1: {"median_ms": 50.0, "images_per_s": 20.0}, 2: {"median_ms": 80.0, "images_per_s": 25.0}}
    sweep = _fake_report([_fake_step(1, 18.0, 1.0), _fake_step(2, 22.5, 2.0)])
    paired = {"rounds": 2, "per_round": 3, "http_p50_ms": 58.0, "raw_p50_ms": 49.0, "overhead_ms": 9.0}
    rounds = [
        {"with": _fake_step(2, 22.5, 2.0), "without": _fake_step(2, 18.0, 1.0)},
        {"with": _fake_step(2, 20.0, 2.0), "without": _fake_step(2, 20.0, 1.0)},
    ]
    result = compare(raw, sweep, paired, rounds)
    assert result["best_concurrency"] == 2
    assert result["throughput_ratio"] == pytest.approx(0.9)
    assert result["p50_overhead_ms_c1"] == 9.0 and result["p50_source"].startswith("paired")
    assert result["batching"]["ratio"] == pytest.approx(21.25 / 19.0, abs=1e-4)  # medians of the rounds
    assert all(result["targets_met"].values())
    pairs = [{"ratio": 0.8}, {"ratio": 0.95}, {"ratio": 1.0}]
    three = compare(raw, sweep, paired, rounds, pairs)
    assert three["throughput_ratio"] == 0.95  # the median round
    assert three["throughput_ratio_ci"] is None  # three rounds are too few for a 90% interval
    eight = compare(raw, sweep, paired, rounds, [{"ratio": r} for r in (0.97, 0.8, 0.91, 0.93, 0.85, 1.2, 0.9, 0.95)])
    assert eight["throughput_ratio"] == pytest.approx(0.92)
    assert eight["throughput_ratio_ci"] == {"low": 0.85, "high": 0.97, "coverage": 0.9297, "n": 8}
    unpaired = compare(raw, sweep)  # falls back to the sweep's c=1 step against raw batch 1
    assert unpaired["p50_overhead_ms_c1"] == pytest.approx(10.0 - 50.0)
    assert "batching" not in unpaired


def test_median_interval_is_the_binomial_order_statistics() -> None:
    """x_(k) … x_(n+1-k) with P(Binomial(n, ½) ≤ k − 1) ≤ 5% on each side: the textbook values."""
    values = [float(v) for v in range(1, 21)]  # n = 20: k = 6 (P(X ≤ 5) = 0.0207, P(X ≤ 6) = 0.0577)
    interval = median_confidence_interval(values)
    assert (interval["low"], interval["high"]) == (6.0, 15.0)
    assert interval["coverage"] == pytest.approx(1 - 2 * 0.020695, abs=1e-4)
    assert median_confidence_interval([1.0, 2.0, 3.0, 4.0]) is None
    assert median_confidence_interval(values[::-1]) == interval  # order of the rounds does not matter


def test_model_bench_on_toy_onnx(toy_onnx: Path) -> None:
    report = run_model_bench(
        toy_onnx, backends=("onnxruntime", "torch", "tensorrt"), batches=(1, 2), runs=2, warmup=0, log=None
    )
    assert report["schema"] == "faseg.bench.model/1"
    assert report["input_size"] == [96, 128]
    assert [(r["backend"], r["batch"]) for r in report["results"]] == [("onnxruntime", 1), ("onnxruntime", 2)]
    for row in report["results"]:
        assert len(row["runs_ms"]) == 2 and row["images_per_s"] > 0
        assert row["speedup_vs_torch_fp32"] is None  # no torch row to compare with
    assert {s["backend"] for s in report["skipped"]} == {"torch", "tensorrt"}
    assert report["fastest"]["2"]["backend"] == "onnxruntime"
    assert report["environment"]["versions"]["onnxruntime"]


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["loadtest", "--url", "http://x", "--out", "o", "--concurrency", "1", "--rate", "5"])
    assert exit_info.value.code == 2
    assert main(["loadtest", "--url", "ftp://x", "--out", "o"]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "service" in capsys.readouterr().out


def test_make_docs_renders_recorded_results(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_docs", REPO / "benchmarks" / "make_docs.py")
    assert spec is not None and spec.loader is not None
    make_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_docs)
    results = tmp_path / "results"
    results.mkdir()
    service = {
        "benchmark": "bench_service",
        "environment": {"date": "2026-01-01", "machine": {"cpu": "test cpu", "logical_cpus": 2}, "versions": {}},
        "model": {"name": "toy", "path": "toy.onnx", "input_size": [96, 128]},
        "settings": {"images": "synthetic", "outputs": "stats", "max_batch_size": 2, "client": "aiohttp"},
        "raw": {"mean": {"1": {"median_ms": 50.0, "images_per_s": 20.0}}},
        "http": {"sweep": [_fake_step(1, 18.0)], "batching_rounds": []},
        "comparison": compare({1: {"median_ms": 50.0, "images_per_s": 20.0}}, _fake_report([_fake_step(1, 18.0)])),
        "label": "test run",
    }
    (results / "2026-01-01_service_toy.json").write_text(json.dumps(service))
    (results / "unrelated.json").write_text(json.dumps({"benchmark": "something_else"}))
    out = tmp_path / "benchmarks.md"
    assert make_docs.main(["--results", str(results), "--out", str(out), "--img", str(tmp_path / "img")]) == 0
    text = out.read_text()
    assert "test run" in text and "| 1 |" in text
    assert "2026-01-01_service_toy.json" in text


def test_raw_backend_drives_every_instance(toy_onnx: Path) -> None:
    """With --instances 2 the raw side runs two batches at once, as the server does, and counts both."""
    from faseg.bench.service_bench import RawBackend, _merge_raw
    from faseg.loadtest.images import synthetic

    raw = RawBackend(toy_onnx, synthetic(4, (96, 64)), max_batch_size=2, server_args=["--instances", "2"])
    try:
        assert raw.instances == 2
        rows = raw.time_batches(runs=2)
        for b, row in rows.items():
            assert row["instances"] == 2 and row["batch"] == b
            assert row["images_per_s"] == pytest.approx(2 * b / (row["median_ms"] / 1000.0), rel=1e-3)
        merged = _merge_raw(rows, rows)
        assert merged[2]["images_per_s"] == pytest.approx(rows[2]["images_per_s"], rel=1e-3)
        assert raw.throughput(2, seconds=0.2) > 0
    finally:
        raw.close()
