"""Side-by-side CPU latency: torch eager vs ONNX Runtime (portable) vs ONNX Runtime (plugin).

One process, one model (random weights, fixed seed), the same uint8 batch for every runtime, runs
interleaved round-robin (torch, portable, plugin, torch, ...) so that load from other processes on a shared
machine hits every runtime alike. Every runtime gets the same number of threads (``--threads``, default 2).

    .venv/bin/python benchmarks/bench_export.py                       # faseg_r50_ade20k, 512x512, batch 1
    .venv/bin/python benchmarks/bench_export.py --preset faseg_tiny --size 256x256 --runs 3 --no-save

Targets (the export issue): portable ≤ 0.8 × torch, plugin ≤ portable (median latency). The result is
written to ``benchmarks/results/<date>_export_cpu.json`` together with a one-line markdown summary.
Needs the custom-op library for the plugin run (``bash export/plugins/build.sh``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from faseg.machine import cpu_name

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_PORTABLE_VS_TORCH = 0.8
TARGET_PLUGIN_VS_PORTABLE = 1.0



def machine_info(threads: int) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "threads_used": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def profile_ops(path: str) -> dict[str, float]:
    """Per-op-type kernel time (ms, summed over the profiled runs) from an ORT profiling trace."""
    events = json.loads(Path(path).read_text())
    totals: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e3
    return {op: round(ms, 2) for op, ms in totals.most_common(12)}


def load_caveat(info: dict) -> str | None:
    """A note when other processes loaded the machine during the run (absolute times are then inflated)."""
    load = max(info["load_average_at_start"][0], info["load_average_at_end"][0])
    cpus = info["logical_cpus"] or 1
    if load <= cpus:
        return None
    return (
        f"shared machine: 1-min load average up to {load:.1f} on {cpus} logical CPUs during the run; absolute "
        "times are inflated, the ratios come from interleaved rounds under the same load"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="faseg_r50_ade20k")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="timed rounds (each runtime once per round)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--graph-optimization", default="all", choices=("disable", "basic", "extended", "all"))
    parser.add_argument("--profile", action="store_true", help="add ORT per-op timings (one extra profiled run)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_export_cpu.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import torch
    from faseg.export.onnx_export import ExportOptions, export_model
    from faseg.export.session import OrtSession, SessionConfig
    from faseg.model import ServingHead, build_model, get_preset
    from faseg.model.summary import parse_size

    size = parse_size(args.size)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = build_model(get_preset(args.preset)).eval()
    images = np.random.default_rng(0).integers(0, 256, (args.batch, *size, 3), dtype=np.uint8)
    info = machine_info(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="faseg-bench-"))
    files, export_seconds = {}, {}
    for flavour in ("portable", "plugin"):
        start = time.perf_counter()
        result = export_model(model, workdir / f"{flavour}.onnx", ExportOptions(size=size, flavour=flavour))
        export_seconds[flavour] = round(time.perf_counter() - start, 1)
        files[flavour] = result.path
        print(f"exported {flavour}: {result.num_nodes} nodes, {export_seconds[flavour]} s", file=sys.stderr)

    config = SessionConfig(device="cpu", intra_op_threads=args.threads, graph_optimization=args.graph_optimization)
    sessions = {flavour: OrtSession(path, config) for flavour, path in files.items()}
    head = ServingHead(model).eval()
    batch_t = torch.from_numpy(images)

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return head(batch_t)[0].numpy()

    runners = {
        "torch_eager": run_torch,
        "ort_portable": lambda: sessions["portable"].run(images, ["labels"])["labels"],
        "ort_plugin": lambda: sessions["plugin"].run(images, ["labels"])["labels"],
    }
    labels = {}
    for _ in range(args.warmup):
        for name, fn in runners.items():
            labels[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(args.runs):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(
            f"round {round_ + 1}/{args.runs}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()),
            file=sys.stderr,
        )

    summary = {
        name: {
            "median_ms": round(statistics.median(t) * 1e3, 1),
            "min_ms": round(min(t) * 1e3, 1),
            "mean_ms": round(statistics.fmean(t) * 1e3, 1),
            "runs_ms": [round(x * 1e3, 1) for x in t],
        }
        for name, t in times.items()
    }
    med = {name: summary[name]["median_ms"] for name in summary}
    ratios = {
        "portable_vs_torch": round(med["ort_portable"] / med["torch_eager"], 3),
        "plugin_vs_portable": round(med["ort_plugin"] / med["ort_portable"], 3),
        "plugin_vs_torch": round(med["ort_plugin"] / med["torch_eager"], 3),
    }
    targets = {
        f"portable <= {TARGET_PORTABLE_VS_TORCH} x torch": ratios["portable_vs_torch"] <= TARGET_PORTABLE_VS_TORCH,
        "plugin <= portable": ratios["plugin_vs_portable"] <= TARGET_PLUGIN_VS_PORTABLE,
    }
    agreement = {name: float((labels[name] == labels["torch_eager"]).mean()) for name in ("ort_portable", "ort_plugin")}

    profiles = {}
    if args.profile:
        for flavour, path in files.items():
            profiled = OrtSession(path, SessionConfig(**{**config.__dict__, "profile_prefix": str(workdir / flavour)}))
            profiled.run(images, ["labels"])
            profiles[flavour] = profile_ops(profiled.end_profiling())

    today = dt.date.today().isoformat()
    info["load_average_at_end"] = list(os.getloadavg())
    markdown = (
        f"| {today} | {args.preset} {size[0]}x{size[1]} batch {args.batch}, CPU ({info['cpu']}, "
        f"{args.threads} threads) | torch eager {med['torch_eager']:.0f} ms "
        f"| ORT portable {med['ort_portable']:.0f} ms "
        f"({ratios['portable_vs_torch']:.2f}x torch) | ORT plugin {med['ort_plugin']:.0f} ms "
        f"({ratios['plugin_vs_portable']:.2f}x portable) |"
    )
    report = {
        "benchmark": "bench_export",
        "date": today,
        "command": "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "preset": args.preset,
        "weights": "random (torch.manual_seed(0))",
        "input_size": list(size),
        "batch": args.batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "graph_optimization": args.graph_optimization,
        "machine": info,
        "export_seconds": export_seconds,
        "latency": summary,
        "ratios": ratios,
        "targets_met": targets,
        "label_agreement_vs_torch": agreement,
        "ort_profile_ms": profiles,
        "markdown": markdown,
    }
    caveat = load_caveat(info)
    if caveat:
        report["caveat"] = caveat
    print(json.dumps(report, indent=2))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS_DIR / f"{today}_export_cpu.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    print(markdown, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
