"""The device check (benchmarks/gpu_check.py) and its benchmark (benchmarks/bench_gpu.py) without a GPU: the skip
path, the file layout, argument handling, and the benchmark's end-to-end loop and ratio bookkeeping on CPU.
The GPU work itself runs on a lent GPU machine (docs/gpu.md)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "benchmarks" / "gpu_check.py"
BENCH_GPU = REPO / "benchmarks" / "bench_gpu.py"
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: nothing skips")


def _run(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)


def _bench_module():
    # As `python benchmarks/bench_gpu.py` runs it: its folder first on sys.path (it imports bench_kernels, hf_compare).
    if str(BENCH_GPU.parent) not in sys.path:
        sys.path.insert(0, str(BENCH_GPU.parent))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH_GPU)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_no_cuda
def test_gpu_check_without_cuda_says_so_and_runs_nothing(tmp_path: Path) -> None:
    proc = _run(GPU_CHECK, "--out", str(tmp_path))
    assert proc.returncode == 3, proc.stderr
    assert "gpu_check: SKIPPED" in proc.stdout and "no CUDA device" in proc.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "skipped" and "no CUDA device" in report["reason"]
    assert report["steps"] == [] and report["facts"]["cuda_available"] is False
    assert report["facts"]["faseg_repo"] == str(REPO)  # the PYTHONPATH shim resolves to this checkout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log"]


@needs_no_cuda
def test_gpu_check_rehearsal_writes_the_layout(tmp_path: Path) -> None:
    proc = _run(GPU_CHECK, "--out", str(tmp_path), "--rehearse", "--steps", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["rehearsal"] is True and [s["step"] for s in report["steps"]] == ["bench"]
    assert report["steps"][0]["bench"]["status"] == "skipped"
    assert json.loads((tmp_path / "bench_gpu.json").read_text())["status"] == "skipped"
    assert "===== bench:" in (tmp_path / "gpu_check.log").read_text()


def test_gpu_check_rejects_an_unknown_step(tmp_path: Path) -> None:
    proc = _run(GPU_CHECK, "--out", str(tmp_path), "--steps", "kernels,tensorrt")
    assert proc.returncode == 2 and "unknown step(s) ['tensorrt']" in proc.stderr


@needs_no_cuda
def test_bench_gpu_without_cuda_skips_cleanly(tmp_path: Path, capsys) -> None:
    assert _bench_module().main(["--out", str(tmp_path), "--no-save"]) == 0
    stdout = capsys.readouterr().out
    assert "bench_gpu: skipped" in stdout and "no CUDA device" in stdout
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["status"] == "skipped" and result["parts"] == ["ops", "e2e", "hf"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parts", "ops,tensorrt"], "unknown part(s) ['tensorrt']"),
        (["--batches", "1,0"], "batch sizes must be >= 1"),
        (["--batches", "eight"], "expected comma-separated batch sizes"),
    ],
)
def test_bench_gpu_argument_errors(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        _bench_module().main([*args, "--no-save"])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_bench_gpu_parses_its_arguments() -> None:
    args = _bench_module().build_parser().parse_args(["--parts", "e2e,hf", "--batches", "2,4", "--runs", "5"])
    assert (args.parts, args.batches, args.runs) == (["e2e", "hf"], [2, 4], 5)


def test_bench_gpu_end_to_end_loop_runs_on_cpu() -> None:
    """The loop the GPU run takes, on CPU: the torch backend on uint8 images, keys named by the kernel path; a
    configuration that cannot run (kernels on without CUDA) is recorded and the others still run."""
    bench = _bench_module()
    args = argparse.Namespace(batches=[1, 2], runs=1, warmup=0)
    out = bench.bench_e2e(args, device="cpu", preset="faseg_tiny", size=(256, 256), precisions=("fp32", "bf16"),
                          kernel_modes=("on", "off"))  # fmt: skip
    errors = out.pop("errors")
    assert sorted(errors) == ["bf16_kernels_on", "fp32_kernels_on"]
    assert "BackendError: --kernels on: the fused CUDA kernels cannot run: no CUDA device" in errors["fp32_kernels_on"]
    assert sorted(out) == ["b1_bf16_reference", "b1_fp32_reference", "b2_bf16_reference", "b2_fp32_reference"]
    assert all(v["p50_ms"] > 0 and v["images_per_s"] > 0 for v in out.values())


def test_bench_gpu_ratios_and_summary() -> None:
    bench = _bench_module()

    def t(ms: float, batch: int) -> dict:
        return {"p50_ms": ms, "images_per_s": batch * 1000 / ms}

    result = {
        "status": "ok",
        "facts": {"gpu": "NVIDIA H200"},
        "ops": {"msda": {"forward_float32": {"speedup": 4.0}, "forward_backward_float32": {"speedup": 2.5}},
                "hrca": {"window": {"speedup": 1.2}}},
        "e2e": {"b8_bf16_fused": t(40, 8), "b8_bf16_reference": t(50, 8), "b1_fp32_fused": t(10, 1)},
        "hf": {"b8_bf16": t(100, 8), "b1_fp32": t(12, 1)},
    }  # fmt: skip
    ratios = bench.ratios(result)
    assert ratios["msda_kernel_vs_reference"] == {"ratio": 4.0, "target": 3.0, "met": True}
    assert ratios["torch_kernels_vs_reference_b8_bf16"] == {"ratio": 1.25, "target": 1.5, "met": False}
    assert ratios["torch_kernels_vs_hf_b8_bf16"] == {"ratio": 2.5, "target": 2.0, "met": True}
    assert ratios["torch_kernels_vs_hf_b1_fp32"] == {"ratio": 1.2, "target": None, "met": None}
    assert "torch_kernels_vs_reference_b1_fp32" not in ratios  # no reference run for that configuration
    result["ratios"] = ratios
    text = "\n".join(bench.summary(result))
    assert "torch_kernels_vs_reference_b8_bf16" in text and "NOT met" in text
    assert "b8_bf16" in text and "100.0" in text


def test_gpu_check_reports_an_interpreter_that_cannot_import_torch(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    python.chmod(0o755)
    proc = _run(GPU_CHECK, "--out", str(tmp_path / "out"), "--python", str(python))
    assert proc.returncode == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["status"] == "failed" and "No module named 'torch'" in report["reason"] and report["steps"] == []


@pytest.mark.slow
def test_bench_gpu_hf_peer_runs_on_cpu() -> None:
    """The HF Mask2Former-R50 peer (built from ResNetConfig, about 20 s on 2 cores) at a small size on CPU."""
    out = _bench_module().bench_hf(argparse.Namespace(batches=[1], runs=1, warmup=0), device="cpu", size=(64, 64),
                                   precisions=("fp32", "bf16"))  # fmt: skip
    assert 40 < out["params_m"] < 50  # ResNet-50 (23.5 M) + Mask2Former head
    assert out["b1_fp32"]["p50_ms"] > 0 and out["b1_bf16"]["images_per_s"] > 0
