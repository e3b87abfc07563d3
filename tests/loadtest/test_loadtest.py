"""`faseg loadtest` against a live server (a real `python -m faseg.service` process on the toy model).

No timed assertions (DESIGN §8): these tests check the report's schema and the exit codes, never speeds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from faseg.bench.service_bench import ServerProcess, free_port, run_service_bench
from faseg.cli import main
from faseg.loadtest import check_report
from faseg.loadtest.images import synthetic
from faseg.loadtest.report import REPORT_CSV, REPORT_JSON, REPORT_PNG, SERVER_STAGES


def test_ten_second_closed_loop_report(live_server: ServerProcess, tmp_path: Path) -> None:
    """Two steps of 1 s warm-up + 4 s measurement: report.json follows the schema, csv and plot exist."""
    out = tmp_path / "report"
    code = main(
        ["loadtest", "--url", live_server.url, "--concurrency", "1,4", "--duration", "4", "--warmup", "1",
         "--synthetic", "--synthetic-size", "320x240", "--synthetic-count", "4", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / REPORT_JSON).read_text())
    assert check_report(report) == []
    assert [s["concurrency"] for s in report["steps"]] == [1, 4]
    for step in report["steps"]:
        assert step["mode"] == "closed"
        assert step["successes"] > 0 and step["images_per_s"] > 0
        assert step["errors"] == {}
        server = step["server"]
        assert set(SERVER_STAGES) <= set(server["stages_ms"])
        assert server["mean_batch_size"] >= 1
        assert server["requests_by_code"].get("200", 0) > 0
        assert "process_cpu_seconds" not in server  # only callers that started the server can read its CPU
        assert step["client"]["cpu_ms_per_image"] > 0
    assert report["target"]["model"]["name"] == "toy"
    assert report["environment"]["machine"]["logical_cpus"] >= 1
    assert report["summary"]["successes"] == sum(s["successes"] for s in report["steps"])
    with (out / REPORT_CSV).open() as f:
        rows = list(csv.DictReader(f))
    assert [r["concurrency"] for r in rows] == ["1", "4"]
    pytest.importorskip("matplotlib")
    assert (out / REPORT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_open_loop_report(live_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "open"
    code = main(
        ["loadtest", "--url", live_server.url, "--rate", "15", "--duration", "2", "--warmup", "0.5",
         "--synthetic-size", "160x120", "--synthetic-count", "2", "--out", str(out), "--quiet", "--client", "httpx"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / REPORT_JSON).read_text())
    assert check_report(report) == []
    [step] = report["steps"]
    assert step["mode"] == "open" and step["rate"] == 15.0 and step["concurrency"] is None
    assert report["tool"]["client"].startswith("httpx")


def test_unreachable_server_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["loadtest", "--url", url, "--duration", "1", "--out", str(tmp_path), "--quiet"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert not (tmp_path / REPORT_JSON).exists()


def test_every_request_failing_exits_1(live_server: ServerProcess, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    out = tmp_path / "out"
    code = main(
        ["loadtest", "--url", live_server.url, "--images", str(images), "--concurrency", "2", "--duration", "1",
         "--warmup", "0", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 1
    report = json.loads((out / REPORT_JSON).read_text())
    assert check_report(report) == []
    assert report["summary"]["successes"] == 0
    assert set(report["steps"][0]["errors"]) == {"400"}


def test_service_bench_parity_run(toy_onnx: Path, tmp_path: Path) -> None:
    """The whole `faseg bench service` sequence at minimal durations: raw, sweep, max_batch_size 1, raw."""
    report = run_service_bench(
        toy_onnx,
        synthetic(2, (160, 120)),
        images="synthetic",
        out_dir=tmp_path,
        concurrency=(1, 2),
        duration_s=1.0,
        warmup_s=0.3,
        max_batch_size=2,
        batching_rounds=1,
        raw_runs=1,
        paired_rounds=1,
        paired_per_round=2,
        throughput_rounds=1,
        throughput_duration_s=0.5,
        log=None,
    )
    assert report["schema"] == "faseg.bench.service/1"
    assert set(report["raw"]["mean"]) == {"1", "2"}
    comparison = report["comparison"]
    assert comparison["throughput_ratio"] > 0 and comparison["throughput_source"].startswith("paired")
    cpu = comparison["cpu_per_image_ms"]
    assert cpu["server_process"] > 0 and cpu["raw_backend_at_that_batch"] >= 0 and cpu["raw_share"] >= 0
    assert all(row["cpu_ms_per_image"] >= 0 for row in report["raw"]["before"].values())
    [pair] = report["http"]["throughput_pairs"]
    assert pair["ratio"] > 0 and pair["raw_images_per_s_at_that_batch"] > 0
    assert comparison["batching"]["concurrency"] == 2 and comparison["batching"]["rounds"] == 1
    paired = report["paired_latency"]
    assert len(paired["http_ms"]) == 2 and len(paired["raw_ms"]) == 2 and paired["http_failures"] == 0
    assert set(comparison["targets_met"]) == {"throughput_ratio >= 0.9", "p50_overhead_ms_c1 <= 15"}
    for name in ("sweep", "no_batching"):
        assert check_report(json.loads((tmp_path / name / REPORT_JSON).read_text())) == []


def test_model_and_bucket_are_sent(live_server: ServerProcess, tmp_path: Path) -> None:
    """--model and --bucket go into every request: a bucket the model has is served, another is a 404."""
    common = ["loadtest", "--url", live_server.url, "--concurrency", "2", "--duration", "1", "--warmup", "0",
              "--synthetic-size", "160x120", "--synthetic-count", "2", "--quiet", "--model", "toy"]  # fmt: skip
    assert main([*common, "--bucket", "96x128", "--out", str(tmp_path / "ok")]) == 0
    report = json.loads((tmp_path / "ok" / REPORT_JSON).read_text())
    assert "model=toy" in report["target"]["request_url"] and "bucket=96x128" in report["target"]["request_url"]
    assert report["target"]["model"]["bucket_names"] == ["96x128"]
    assert main([*common, "--bucket", "64x64", "--out", str(tmp_path / "bad")]) == 1
    report = json.loads((tmp_path / "bad" / REPORT_JSON).read_text())
    assert set(report["steps"][0]["errors"]) == {"404"}
