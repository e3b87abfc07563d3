"""The service's own CPU cost per request, measured where the model costs almost nothing.

On a CPU server every millisecond the service spends beyond the model (HTTP, decode, letterbox, statistics,
thread hand-offs) is taken from the model's cores, so it decides the HTTP / raw throughput ratio of
`faseg bench service`. That ratio is a difference of two noisy throughputs on a shared machine; this script
measures the cost itself: a server on a model that costs next to nothing (a per-pixel colour classifier
exported to ONNX at the demo model's 256×256 input: under a millisecond of CPU per image) under a closed-loop
load, with the server's CPU seconds read from /proc before and after (CPU time moves less with other load on
the machine than throughput does), minus the model's own CPU per image timed in-process.

    .venv/bin/python benchmarks/service_cpu_overhead.py                 # records benchmarks/results/
    .venv/bin/python benchmarks/service_cpu_overhead.py --label "before the change" --out ab.json --append

With ``--append`` a run is added to the file's ``variants`` (alternate code versions into one file to compare
them: the service code under test is whatever the working tree holds; ``label`` says which).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZE = (256, 256)  # (H, W): the demo model's input, so decode, letterbox and statistics cost what they cost there


def tiny_model(path: Path) -> Path:
    """A model that costs next to nothing: the class is the red channel's top two bits, the confidence the red
    value / 255 (uint8 NHWC in, labels + confidence out: the service's contract)."""
    import torch
    from faseg.export.metadata import META_CLASSES, META_INPUT_SIZE, META_PALETTE

    class Tiny(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            red = images[..., 0]
            return torch.div(red, 64, rounding_mode="floor").to(torch.uint8), red.float() / 255.0

    torch.onnx.export(  # the TorchScript exporter: enough for three operators, and no onnxscript needed
        Tiny().eval(),
        (torch.zeros(1, *SIZE, 3, dtype=torch.uint8),),
        str(path),
        input_names=["images"],
        output_names=["labels", "confidence"],
        dynamic_axes={"images": {0: "batch"}, "labels": {0: "batch"}, "confidence": {0: "batch"}},
        dynamo=False,
    )
    import onnx

    proto = onnx.load(str(path))
    metadata = {
        META_CLASSES: json.dumps(["a", "b", "c", "d"]),
        META_PALETTE: json.dumps([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]),
        META_INPUT_SIZE: json.dumps(list(SIZE)),
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def measure(model: Path, payloads: list[Any], concurrency: int, seconds: float, logs: Path) -> dict[str, float]:
    from faseg.bench.service_bench import ServerProcess
    from faseg.loadtest import LoadTestConfig
    from faseg.loadtest import run as run_loadtest

    with ServerProcess(model, [], logs / "server.log") as server:
        config = LoadTestConfig(
            url=server.url,
            payloads=payloads,
            images="synthetic JPEG 640x480 x16",
            levels=[concurrency],
            duration_s=seconds,
            warmup_s=1.0,
            progress=None,
            server_cpu=server.cpu_seconds,
        )
        [step] = run_loadtest(config)["steps"]
    return {
        "requests_per_s": step["requests_per_s"],
        "server_cpu_ms_per_request": step["server"]["process_cpu_ms_per_image"],
        "client_cpu_ms_per_request": step["client"]["cpu_ms_per_image"],
        "p50_ms": step["latency_ms"]["p50"],
        "mean_batch_size": step["server"]["mean_batch_size"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=4, help="closed-loop concurrency (4)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run (8)")
    parser.add_argument("--runs", type=int, default=3, help="server runs; the median counts (3)")
    parser.add_argument("--label", default="", help="a note stored with the result")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    parser.add_argument("--append", action="store_true", help="add this run to the variants already in --out")
    parser.add_argument("--out", type=Path, help="record here (default: results/DATE_service_cpu_overhead.json)")
    args = parser.parse_args(argv)

    from faseg.bench.service_bench import RawBackend, interpolate
    from faseg.loadtest import synthetic
    from faseg.loadtest.report import environment

    payloads = synthetic(16, (640, 480))
    work = Path(tempfile.mkdtemp(prefix="service_cpu_overhead_"))
    model = tiny_model(work / "tiny.onnx")
    runs = []
    for index in range(args.runs):
        runs.append(measure(model, payloads, args.concurrency, args.seconds, work))
        print(f"run {index + 1}/{args.runs}: {json.dumps(runs[-1])}", file=sys.stderr)
    raw = RawBackend(model, payloads, max_batch_size=2 * args.concurrency, server_args=[])
    try:
        model_cpu = {b: row["cpu_ms_per_image"] for b, row in raw.time_batches(20).items()}
    finally:
        raw.close()
    for run in runs:
        run["model_cpu_ms_per_image"] = round(interpolate(model_cpu, run["mean_batch_size"]), 3)
        run["service_cpu_ms_per_request"] = round(run["server_cpu_ms_per_request"] - run["model_cpu_ms_per_image"], 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    changed = subprocess.run(
        ["git", "status", "--porcelain", "service", "faseg"], cwd=ROOT, capture_output=True, text=True
    )
    variant = {
        "label": args.label,
        "commit": commit.stdout.strip() or None,
        "service_code_modified": bool(changed.stdout.strip()),  # the working tree differs from that commit
        "environment": environment(),
        "model_cpu_ms_per_image_by_batch": model_cpu,
        "runs": runs,
        "median": {key: statistics.median(run[key] for run in runs) for key in runs[0]},
    }
    print(json.dumps(variant["median"], indent=1))
    if args.no_record:
        return 0
    out = args.out or RESULTS / f"{variant['environment']['date']}_service_cpu_overhead.json"
    result = json.loads(out.read_text()) if args.append and out.is_file() else None
    if result is None:
        result = {
            "benchmark": "service_cpu_overhead",
            "environment": variant["environment"],  # of the first variant
            "command": "python benchmarks/service_cpu_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "model": f"per-pixel colour classifier, input {SIZE[0]}x{SIZE[1]}, ONNX Runtime CPU",
            "settings": {"concurrency": args.concurrency, "seconds": args.seconds, "runs": args.runs},
            "variants": [],
        }
    result["variants"].append(variant)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"recorded {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
