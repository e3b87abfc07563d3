"""`faseg bench model`: images/s and latency per backend × batch size × precision, side by side in one run.

Every configuration runs through the same ``faseg.service`` backend class the server uses (so the numbers
are the "raw backend" of the service benchmark), on the same uint8 batch. Runs are interleaved round-robin
(config A, B, C, A, B, C, ...) within each batch size, so load from other processes on a shared machine
hits every configuration alike; the median of the timed runs is reported.

Backends: ``torch`` (the checkpoint's ``ServingHead`` in eager mode), ``onnxruntime`` (the portable ONNX
export, exported on the fly at ``--size`` unless an .onnx file is given), ``onnxruntime-plugin`` (the
plugin flavour with our custom-op library), ``tensorrt`` (CUDA only). A configuration that cannot run here
is listed under ``skipped`` with the reason, never silently dropped.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from faseg.loadtest.images import synthetic_image
from faseg.loadtest.report import environment

SCHEMA = "faseg.bench.model/1"
BACKENDS = ("torch", "onnxruntime", "onnxruntime-plugin", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
MS = 1000.0


class BenchError(ValueError):
    """The benchmark cannot run as asked."""


class Skip(Exception):
    """This configuration cannot run on this machine; the message says why."""


@dataclass
class Candidate:
    backend: str
    precision: str
    infer: Callable[[np.ndarray], Any]
    close: Callable[[], None]

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.precision}"


def batch_images(size: tuple[int, int], batch: int, seed: int = 0) -> np.ndarray:
    """uint8 (batch, H, W, 3) of synthetic photograph-like images at the model size (H, W)."""
    h, w = size
    return np.stack([np.asarray(synthetic_image((w, h), seed + i)) for i in range(batch)])


def _onnx_file(checkpoint: Path, size: tuple[int, int], flavour: str, workdir: Path, log: TextIO | None) -> Path:
    from faseg.export.onnx_export import ExportOptions, export_checkpoint

    target = workdir / f"{checkpoint.name}-{size[0]}x{size[1]}-{flavour}.onnx"
    if not target.is_file():
        if log:
            print(f"exporting {checkpoint} to {flavour} ONNX at {size[0]}x{size[1]} ...", file=log)
        export_checkpoint(checkpoint, target, ExportOptions(size=size, flavour=flavour))
    return target


def load_candidate(
    backend: str,
    precision: str,
    *,
    checkpoint: Path,
    size: tuple[int, int],
    max_batch: int,
    threads: int,
    workdir: Path,
    log: TextIO | None,
) -> Candidate:
    """One backend × precision, loaded through the service's backend classes; raises Skip."""
    from faseg.service.backends.base import ModelInfo

    is_onnx = checkpoint.suffix.lower() == ".onnx"
    if backend == "tensorrt":
        raise Skip("needs a CUDA device and a serialized engine (faseg export trt); benchmark it on a GPU machine")
    if backend == "torch":
        if is_onnx:
            raise Skip("an .onnx file has no torch weights; pass the checkpoint directory")
        if precision == "fp16":
            raise Skip("fp16 autocast needs CUDA")
        from faseg.model import ServingHead
        from faseg.model.checkpoint import from_pretrained
        from faseg.service.backends.torch import TorchBackend

        model = from_pretrained(checkpoint)
        info = model.checkpoint_info
        model_info = ModelInfo(
            name=checkpoint.name, classes=tuple(info.classes), palette=tuple(info.palette), input_size=size
        )
        torch_backend = TorchBackend(
            ServingHead(model), model_info, max_batch_size=max_batch, precision=precision, intra_op_threads=threads
        )
        return Candidate(backend, precision, torch_backend.infer, torch_backend.close)
    # onnxruntime, portable or plugin flavour
    if precision != "fp32":
        raise Skip(f"{precision} ONNX export is not implemented (faseg export onnx --precision); fp32 only")
    flavour = "plugin" if backend == "onnxruntime-plugin" else "portable"
    if flavour == "plugin":
        from faseg.export.custom_ops import missing_library_message, ort_custom_ops_library

        if ort_custom_ops_library() is None:
            raise Skip(missing_library_message())
    if is_onnx:
        if flavour == "plugin":
            raise Skip("give the checkpoint directory to export the plugin flavour")
        path = checkpoint
    else:
        path = _onnx_file(checkpoint, size, flavour, workdir, log)
    from faseg.service.backends.onnxruntime import OnnxRuntimeBackend

    ort_backend = OnnxRuntimeBackend.load(
        path, model_name=path.stem, max_batch_size=max_batch, intra_op_threads=threads
    )
    if ort_backend.input_size != size:
        got = ort_backend.input_size
        raise BenchError(f"{path} takes {got[0]}x{got[1]} images, not the requested {size[0]}x{size[1]}")
    return Candidate(backend, precision, ort_backend.infer, ort_backend.close)


def time_interleaved(
    candidates: Sequence[Candidate], images: np.ndarray, runs: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each timed run per candidate, runs interleaved round-robin after ``warmup`` rounds."""
    for _ in range(warmup):
        for candidate in candidates:
            candidate.infer(images)
    times: dict[str, list[float]] = {c.label: [] for c in candidates}
    for _ in range(runs):
        for candidate in candidates:
            started = time.perf_counter()
            candidate.infer(images)
            times[candidate.label].append(time.perf_counter() - started)
    return times


def latency_row(seconds: Sequence[float], batch: int) -> dict[str, Any]:
    ordered = sorted(seconds)
    median = statistics.median(ordered)
    return {
        "batch": batch,
        "median_ms": round(median * MS, 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))] * MS, 3),
        "min_ms": round(ordered[0] * MS, 3),
        "mean_ms": round(statistics.fmean(ordered) * MS, 3),
        "ms_per_image": round(median / batch * MS, 3),
        "images_per_s": round(batch / median, 3),
        "runs_ms": [round(s * MS, 3) for s in seconds],
    }


def resolve_size(checkpoint: Path, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        return size
    if checkpoint.suffix.lower() == ".onnx":
        from faseg.export.contract import metadata_input_size
        from faseg.export.session import read_metadata

        found = metadata_input_size(read_metadata(checkpoint), checkpoint.name)
        if found is None:
            raise BenchError(f"{checkpoint} does not state its input size; pass --size")
        return found
    from faseg.model.checkpoint import read_checkpoint_info

    return read_checkpoint_info(checkpoint).input_size


def _load_candidates(
    backends: Sequence[str], precisions: Sequence[str], **load: Any
) -> tuple[list[Candidate], list[dict[str, str]]]:
    """Every backend × precision that can run here, and the reasons of those that cannot."""
    candidates: list[Candidate] = []
    skipped: list[dict[str, str]] = []
    for backend in backends:
        for precision in precisions:
            try:
                candidates.append(load_candidate(backend, precision, **load))
            except Skip as reason:
                skipped.append({"backend": backend, "precision": precision, "reason": str(reason)})
    return candidates, skipped


def _fastest(results: Sequence[dict[str, Any]], batches: Sequence[int]) -> dict[str, dict[str, Any]]:
    """The fastest backend / precision per batch size."""
    fastest = {}
    for batch in batches:
        best = max((r for r in results if r["batch"] == batch), key=lambda r: r["images_per_s"])
        fastest[str(batch)] = {
            "backend": best["backend"],
            "precision": best["precision"],
            "images_per_s": best["images_per_s"],
        }
    return fastest


def run_model_bench(
    checkpoint: str | Path,
    *,
    backends: Sequence[str] = ("torch", "onnxruntime"),
    precisions: Sequence[str] = ("fp32",),
    batches: Sequence[int] = (1, 2, 4, 8),
    size: tuple[int, int] | None = None,
    runs: int = 5,
    warmup: int = 1,
    threads: int = 0,
    workdir: Path | None = None,
    log: TextIO | None = sys.stderr,
) -> dict[str, Any]:
    """The benchmark report (see the module docstring)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise BenchError(f"checkpoint {str(checkpoint)!r} does not exist")
    unknown = sorted(set(backends) - set(BACKENDS)) + sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise BenchError(f"unknown backends/precisions {unknown}; backends: {BACKENDS}, precisions: {PRECISIONS}")
    if not batches or min(batches) < 1 or runs < 1 or warmup < 0:
        raise BenchError("batch sizes and runs must be ≥ 1, warm-up ≥ 0")
    size = resolve_size(checkpoint, size)
    env = environment()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="faseg-bench-model-"))
    candidates, skipped = _load_candidates(
        backends, precisions, checkpoint=checkpoint, size=size, max_batch=max(batches), threads=threads,
        workdir=workdir, log=log,
    )  # fmt: skip
    if not candidates:
        raise BenchError(
            "no configuration can run here: "
            + "; ".join(f"{s['backend']}/{s['precision']}: {s['reason']}" for s in skipped)
        )
    results: list[dict[str, Any]] = []
    try:
        for batch in batches:
            images = batch_images(size, batch)
            times = time_interleaved(candidates, images, runs, warmup)
            for candidate in candidates:
                row = {
                    "backend": candidate.backend,
                    "precision": candidate.precision,
                    **latency_row(times[candidate.label], batch),
                }
                results.append(row)
                if log:
                    print(
                        f"batch {batch:3d}  {candidate.label:<26} {row['median_ms']:10.1f} ms  "
                        f"{row['images_per_s']:8.2f} img/s",
                        file=log,
                    )
    finally:
        for candidate in candidates:
            candidate.close()
    fastest = _fastest(results, batches)
    baseline = {r["batch"]: r for r in results if r["backend"] == "torch" and r["precision"] == "fp32"}
    for row in results:
        base = baseline.get(row["batch"])
        row["speedup_vs_torch_fp32"] = round(base["median_ms"] / row["median_ms"], 3) if base else None
    env["threads"] = threads
    return {
        "benchmark": "bench_model",
        "schema": SCHEMA,
        "environment": env,
        "checkpoint": str(checkpoint),
        "input_size": list(size),
        "settings": {
            "backends": list(backends),
            "precisions": list(precisions),
            "batches": list(batches),
            "runs": runs,
            "warmup": warmup,
            "threads": threads,
            "images": "synthetic photograph-like images at the model size (faseg.loadtest.images.synthetic_image)",
        },
        "results": results,
        "skipped": skipped,
        "fastest": fastest,
    }
