"""benchmarks/service_int8.py (int8 vs fp32 over HTTP): the alternating order, the pair-by-pair ratios, and a
short end-to-end run on the toy model served twice (no timed assertions: the report's content only)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "service_int8.py"


def _module():
    spec = importlib.util.spec_from_file_location("service_int8", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_alternate_which_precision_goes_first() -> None:
    assert _module().order(3) == ["fp32", "int8", "int8", "fp32", "fp32", "int8"]


def test_ratios_are_taken_pair_by_pair_whatever_the_order() -> None:
    rounds = [
        {"precision": "fp32", "images_per_s": 10.0, "server_cpu_ms_per_image": 200.0},
        {"precision": "int8", "images_per_s": 13.0, "server_cpu_ms_per_image": 160.0},
        {"precision": "int8", "images_per_s": 12.0, "server_cpu_ms_per_image": None},
        {"precision": "fp32", "images_per_s": 8.0, "server_cpu_ms_per_image": 250.0},
    ]
    assert _module().pair_ratios(rounds) == [
        {"images_per_s": 1.3, "server_cpu_per_image": 1.25},
        {"images_per_s": 1.5, "server_cpu_per_image": None},
    ]


def test_a_short_run_on_given_files_reports_both_precisions(toy_onnx: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--fp32", str(toy_onnx), "--int8", str(toy_onnx), "--rounds", "1"]
    command += ["--seconds", "1", "--warmup", "0.2", "--concurrency", "2", "--image-size", "64x48", "--no-record"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "int8 / fp32 HTTP images/s per pair" in done.stdout
    assert "round 1 fp32" in done.stderr and "round 1 int8" in done.stderr


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--fp32", str(tmp_path / "none.onnx"), "--no-record"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "none.onnx does not exist" in done.stderr
