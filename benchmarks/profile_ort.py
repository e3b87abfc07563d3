"""Where ONNX Runtime CPU spends its time on our exported files: per op type and per model part.

Each file runs in a session built by :class:`faseg.export.session.OrtSession` with the service's CPU settings
(``--threads`` intra-op threads, spinning off, graph optimisation ``all``) and ONNX Runtime's profiler on; the
files take turns (one run each per round, so load from other processes hits them alike). From the trace's
``Node`` events (kernel time of each node after ORT's graph optimisation and QDQ fusion) we sum, per run and
then as the median over the timed runs:

- ``by_op``: op type as executed (``QLinearConv`` / ``ConvInteger`` ... when ORT fused a QDQ pair; a leftover
  ``QuantizeLinear`` / ``DequantizeLinear`` is a pair ORT did not fuse);
- ``by_part``: backbone / pixel decoder / transformer decoder / serving head, from the exporter's scoped
  node names (``/backbone/...``, ``/pixel_decoder/...``, ``/predictor/...``; the rest is the head, which so
  also holds the nodes the export's ``optimize`` step names ``faseg_opt/...``: the mask-logit products of every
  decoder layer as well as the head's class scores);
- ``by_part_op``: the two together, the top entries only;

plus each file's wall-clock and process-CPU medians (the CPU time is steadier on a shared machine) and the
fraction of its labels equal to the first file's (an A/B of two exports of one model: before / after a change).

    .venv/bin/python benchmarks/profile_ort.py A.onnx B.onnx --batch 4 --runs 5 \
        --out benchmarks/results/<date>_ort_profile_demo.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    ("backbone", re.compile(r"/backbone/")),
    ("pixel decoder", re.compile(r"/pixel_decoder/")),
    ("transformer decoder", re.compile(r"/predictor/")),
)
QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def model_part(node_name: str) -> str:
    for part, scope in PARTS:
        if scope.search(node_name):
            return part
    return "serving head and glue"


def node_times(trace: list[dict[str, Any]], runs: int) -> list[dict[tuple[str, str], float]]:
    """Per model run (the last ``runs`` of the trace): {(node name, op type): kernel µs}."""
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    per_run: list[dict[tuple[str, str], float]] = [defaultdict(float) for _ in spans]
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        for i, (start, end) in enumerate(spans):
            if start <= event["ts"] <= end:
                name = event["name"].removesuffix("_kernel_time")
                per_run[i][(name, event["args"].get("op_name", "?"))] += event["dur"]
                break
    return per_run[-runs:]


def aggregate(per_run: list[dict[tuple[str, str], float]]) -> dict[str, Any]:
    def median_of(key_of: Any) -> dict[str, float]:
        sums = []
        for run in per_run:
            acc: dict[str, float] = defaultdict(float)
            for key, us in run.items():
                acc[key_of(*key)] += us
            sums.append(acc)
        keys = set().union(*sums)
        return dict(
            sorted(
                ((k, round(statistics.median(s.get(k, 0.0) for s in sums) / 1e3, 2)) for k in keys),
                key=lambda kv: -kv[1],
            )
        )

    by_op = median_of(lambda name, op: op)
    by_part = median_of(lambda name, op: model_part(name))
    by_part_op = median_of(lambda name, op: f"{model_part(name)} | {op}")
    total = sum(by_op.values())
    counts: dict[str, int] = defaultdict(int)
    for _name, op in per_run[-1]:
        counts[op] += 1
    return {
        "nodes_total_ms": round(total, 1),
        "by_op_ms": by_op,
        "by_part_ms": by_part,
        "by_part_op_ms_top": dict(list(by_part_op.items())[:30]),
        "executed_nodes_by_op": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "leftover_qdq_nodes": {op: counts[op] for op in QDQ if counts.get(op)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="exported .onnx files")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="timed, profiled runs per file (after one warm-up)")
    parser.add_argument("--out", help="summary JSON (default: print only)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from faseg.export.session import OrtSession, SessionConfig

    from faseg.loadtest.report import environment

    env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="faseg-profile-"))
    sessions = {}
    for i, path in enumerate(args.files):
        config = SessionConfig(
            device="cpu", intra_op_threads=args.threads, allow_spinning=False, profile_prefix=str(tmp / f"f{i}")
        )
        sessions[path] = OrtSession(path, config)
    h, w = next(iter(sessions.values())).input_size or (512, 512)
    rng = np.random.default_rng(0)
    import skimage.data
    from PIL import Image

    photo = np.array(Image.fromarray(skimage.data.astronaut()).resize((w, h), Image.Resampling.BILINEAR))
    images = np.stack([photo if i % 2 == 0 else rng.integers(0, 256, (h, w, 3), np.uint8) for i in range(args.batch)])
    wall: dict[str, list[float]] = {p: [] for p in sessions}
    cpu: dict[str, list[float]] = {p: [] for p in sessions}
    labels: dict[str, np.ndarray] = {}
    for round_ in range(args.runs + 1):
        for path, session in sessions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            labels[path] = session.run(images, ["labels"])["labels"]
            if round_:
                wall[path].append(time.perf_counter() - start)
                cpu[path].append(time.process_time() - start_cpu)
        print(
            f"round {round_}: " + ", ".join(f"{Path(p).name} {t[-1] * 1e3:.0f}ms" for p, t in wall.items() if t),
            file=sys.stderr,
        )
    report: dict[str, Any] = {
        "benchmark": "profile_ort",
        "date": env["date"],
        "command": "python benchmarks/profile_ort.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env,
        "threads": args.threads,
        "batch": args.batch,
        "input_size": [h, w],
        "runs": args.runs,
        "session": "OrtSession(device=cpu, intra_op_threads=threads, allow_spinning=False, graph optimisation all)",
        "files": {},
    }
    for path, session in sessions.items():
        trace_file = session.end_profiling()
        trace = json.loads(Path(trace_file).read_text())
        summary = aggregate(node_times(trace, args.runs))
        summary["wall_median_ms"] = round(statistics.median(wall[path]) * 1e3, 1)
        summary["wall_runs_ms"] = [round(t * 1e3, 1) for t in wall[path]]
        # CPU seconds of this process during the run: less disturbed than wall time by other processes' load
        summary["process_cpu_median_ms"] = round(statistics.median(cpu[path]) * 1e3, 1)
        summary["labels_equal_to_first_file"] = round(float((labels[path] == labels[args.files[0]]).mean()), 5)
        summary["precision"] = session.precision
        summary["flavour"] = session.flavour
        report["files"][Path(path).name] = summary
    report["environment"]["load_average_at_end"] = environment()["machine"]["load_average"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
