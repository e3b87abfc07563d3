"""CPU time of FASeg's ONNX Runtime custom ops, two builds of ``libfaseg_ort_ops.so`` side by side.

Times each custom op alone: a one-node ONNX graph run by ONNX Runtime (CPU, ``--threads`` intra-op threads,
spinning off, as the service runs it) at the shapes of ``faseg_r50_ade20k`` at 512×512, batch 1:

- ``msda`` (FASegMSDeformAttn_TRT): levels 64×64, 32×32, 16×16 (S = Lq = 5376), 8 heads × 32 channels,
  4 points. Sampling locations are each query's own pixel centre plus a Gaussian offset of 2 pixels per
  level (trained deformable attention samples near the query; some samples fall off the map), weights a
  softmax over the 12 samples of a head.
- ``topk`` (FASegTopKCrossAttn_TRT, window mode): 100 queries, C = 256, 8 heads, 1/4 map 128×128 under a
  16×16 map of 1/32 tokens, divisor 32 (8 windows of 8×8 = 512 memory tokens).

Inputs are 64-byte aligned, as ORT's allocator hands them to the op inside a model. A process can load only
one library per op domain, so every measurement runs in its own subprocess; the baseline and the candidate
alternate, ``--rounds`` times each, and the ratio is taken of the medians of the per-round medians. The
baseline defaults to the library built from ``main``'s sources (``git archive main export/plugins`` into a
temporary directory, then ``export/plugins/build.sh`` there); ``--baseline-lib`` takes a prebuilt one
instead. Both builds run the same inputs, so the output's max abs difference between them is reported too
(0.0 and ``bit_identical`` = same bits).

    .venv/bin/python benchmarks/bench_ort_ops.py                              # main vs build/ort_ops
    .venv/bin/python benchmarks/bench_ort_ops.py --ops msda --baseline-lib /tmp/old.so --rounds 3 --label x

Writes ``benchmarks/results/<date>_ort_ops_<label>.json`` (``--no-save`` to skip) with the machine and its
load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from faseg.export import custom_ops

from faseg.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"

MSDA_LEVELS = [(64, 64), (32, 32), (16, 16)]
MSDA_HEADS, MSDA_HEAD_DIM, MSDA_POINTS = 8, 32, 4
OFFSET_PIXELS = 2.0


def msda_feed(seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of one FASegMSDeformAttn_TRT call of the R50 pixel decoder at 512×512, batch 1."""
    rng = np.random.default_rng(seed)
    s = sum(h * w for h, w in MSDA_LEVELS)
    levels = len(MSDA_LEVELS)
    value = rng.standard_normal((1, s, MSDA_HEADS, MSDA_HEAD_DIM), dtype=np.float32)
    # Each query's reference point: the centre of its own pixel, normalised, on its own level.
    refs = []
    for h, w in MSDA_LEVELS:
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        refs.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
    ref = np.concatenate(refs).astype(np.float32)  # (S, 2)
    sizes = np.asarray([[w, h] for h, w in MSDA_LEVELS], dtype=np.float32)  # (L, 2) as (x, y)
    offsets = rng.standard_normal((1, s, MSDA_HEADS, levels, MSDA_POINTS, 2)).astype(np.float32) * OFFSET_PIXELS
    loc = ref[None, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
    logits = rng.standard_normal((1, s, MSDA_HEADS, levels * MSDA_POINTS)).astype(np.float32)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    starts = np.cumsum([0] + [h * w for h, w in MSDA_LEVELS[:-1]]).astype(np.int32)
    return {
        "value": value,
        "spatial_shapes": np.asarray(MSDA_LEVELS, dtype=np.int32),
        "level_start_index": starts,
        "sampling_locations": loc.astype(np.float32),
        "attention_weights": weights.reshape(1, s, MSDA_HEADS, levels, MSDA_POINTS).astype(np.float32),
    }


TOPK_QUERIES, TOPK_CHANNELS, TOPK_HEADS = 100, 256, 8
TOPK_LEVEL0, TOPK_WINDOW, TOPK_DIVISOR = (16, 16), 8, 32


def topk_feed(seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of one FASegTopKCrossAttn_TRT call of the R50 decoder at 512×512, batch 1."""
    rng = np.random.default_rng(seed)
    c, (h0, w0), ws = TOPK_CHANNELS, TOPK_LEVEL0, TOPK_WINDOW
    logits = rng.standard_normal((1, TOPK_QUERIES, h0 * w0)) * 3
    coarse = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    arrays = {
        "query": rng.standard_normal((1, TOPK_QUERIES, c)),
        "feat": rng.standard_normal((1, c, h0 * ws, w0 * ws)),
        "pos": rng.standard_normal((1, c, h0 * ws, w0 * ws)),
        "coarse_attn": coarse,
        "in_proj_weight": rng.standard_normal((3 * c, c)) / c**0.5,
        "in_proj_bias": rng.standard_normal(3 * c) * 0.1,
        "out_proj_weight": rng.standard_normal((c, c)) / c**0.5,
        "out_proj_bias": rng.standard_normal(c) * 0.1,
    }
    return {name: array.astype(np.float32) for name, array in arrays.items()}


#: name -> (op type, inputs, output shape, op attributes)
OPS = {
    "msda": (
        custom_ops.MS_DEFORM_ATTN_OP,
        msda_feed,
        lambda feed: [1, feed["sampling_locations"].shape[1], MSDA_HEADS, MSDA_HEAD_DIM],
        {},
    ),
    "topk": (
        custom_ops.TOPK_CROSS_ATTN_OP,
        topk_feed,
        lambda feed: list(feed["query"].shape),
        {
            "num_heads": TOPK_HEADS,
            "divisor": TOPK_DIVISOR,
            "mode": custom_ops.TOPK_MODES["window"],
            "level0_h": TOPK_LEVEL0[0],
            "level0_w": TOPK_LEVEL0[1],
        },
    ),
}


def aligned(array: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy of ``array`` whose data starts on an ``alignment``-byte boundary.

    ONNX Runtime runs on numpy inputs in place, and a large numpy array is only 16-byte aligned; inside the
    model the op's inputs come from ORT's allocator (64-byte aligned), so the benchmark aligns them too."""
    buffer = np.empty(array.nbytes + alignment, dtype=np.uint8)
    offset = -buffer.ctypes.data % alignment
    out = buffer[offset : offset + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def worker(op: str, library: str, threads: int, runs: int, warmup: int, output: str | None) -> None:
    """Subprocess body: time ``op`` with ``library`` and print the per-run milliseconds as JSON."""
    import onnxruntime as ort

    op_type, make_feed, out_shape, attrs = OPS[op]
    feed = {name: aligned(array) for name, array in make_feed().items()}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.register_custom_ops_library(library)
    model = custom_ops.single_node_model(op_type, feed, out_shape(feed), **attrs).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        result = session.run(None, feed)[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = session.run(None, feed)[0]
        times.append((time.perf_counter() - start) * 1e3)
    if output:
        np.save(output, result)
    print(json.dumps(times))


def run_worker(op: str, library: Path, args: argparse.Namespace, output: Path | None) -> list[float]:
    command = [sys.executable, __file__, "--worker", str(library), "--ops", op, "--threads", str(args.threads)]
    command += ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    if output is not None:
        command += ["--output", str(output)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(op: str, builds: dict[str, Path], args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Alternating rounds of ``op`` over the builds; medians, ratio and the outputs' difference."""
    medians: dict[str, list[float]] = {name: [] for name in builds}
    for round_index in range(args.rounds):
        for name, library in builds.items():
            output = workdir / f"{op}_{name}.npy" if round_index == 0 else None
            medians[name].append(statistics.median(run_worker(op, library, args, output)))
        print(
            f"{op} round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{name} {values[-1]:.2f} ms" for name, values in medians.items()),
            file=sys.stderr,
        )
    base_out, cand_out = np.load(workdir / f"{op}_baseline.npy"), np.load(workdir / f"{op}_candidate.npy")
    summary = {name: statistics.median(values) for name, values in medians.items()}
    return {
        "op": OPS[op][0],
        "baseline_median_ms": summary["baseline"],
        "candidate_median_ms": summary["candidate"],
        "speedup_baseline_over_candidate": summary["baseline"] / summary["candidate"],
        "baseline_round_medians_ms": medians["baseline"],
        "candidate_round_medians_ms": medians["candidate"],
        "output_max_abs_diff": float(np.max(np.abs(base_out.astype(np.float64) - cand_out.astype(np.float64)))),
        "output_bit_identical": bool(np.array_equal(base_out.view(np.uint32), cand_out.view(np.uint32))),
    }


def build_baseline(ref: str, workdir: Path) -> Path:
    """Build ``libfaseg_ort_ops.so`` from ``ref``'s ``export/plugins`` into ``workdir`` (headers cache shared)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "export/plugins"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    env = {
        **os.environ,
        "FASEG_ORT_HEADERS_DIR": os.environ.get("FASEG_ORT_HEADERS_DIR", str(ROOT / "build" / "ort-headers")),
    }
    built = subprocess.run(
        [str(workdir / "export" / "plugins" / "build.sh")], check=True, capture_output=True, text=True, env=env
    )
    return Path(built.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    import onnxruntime

    return {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", default="msda,topk", help="comma-separated subset of: " + ", ".join(OPS))
    parser.add_argument("--baseline-ref", default="main", help="git ref whose export/plugins is the baseline")
    parser.add_argument("--baseline-lib", type=Path, help="prebuilt baseline library (instead of --baseline-ref)")
    parser.add_argument("--candidate-lib", type=Path, help="default: the library faseg finds (build/ort_ops/)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (one subprocess per build each)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per subprocess")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--label", default="simd")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        print(f"bench_ort_ops: --ops {args.ops!r}: choose from {', '.join(OPS)}", file=sys.stderr)
        return 2
    if args.worker:
        worker(ops[0], args.worker, args.threads, args.runs, args.warmup, args.output)
        return 0

    candidate = args.candidate_lib or custom_ops.ort_custom_ops_library()
    if candidate is None or not Path(candidate).is_file():
        print(f"bench_ort_ops: no candidate library: {custom_ops.missing_library_message()}", file=sys.stderr)
        return 2
    if args.baseline_lib is not None and not args.baseline_lib.is_file():
        print(f"bench_ort_ops: --baseline-lib {args.baseline_lib} does not exist", file=sys.stderr)
        return 2

    info = machine()
    with tempfile.TemporaryDirectory(prefix="bench_ort_ops_") as tmp:
        workdir = Path(tmp)
        if args.baseline_lib is not None:
            baseline, baseline_source = args.baseline_lib, str(args.baseline_lib)
        else:
            print(f"building the baseline from {args.baseline_ref}:export/plugins ...", file=sys.stderr)
            baseline, baseline_source = build_baseline(args.baseline_ref, workdir), f"git {args.baseline_ref}"
        builds = {"baseline": Path(baseline), "candidate": Path(candidate)}
        results = {op: compare(op, builds, args, workdir) for op in ops}
    info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]

    result = {
        "benchmark": "bench_ort_ops",
        "command": "python benchmarks/bench_ort_ops.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "baseline_library": baseline_source,
        "candidate_library": str(candidate),
        "threads": args.threads,
        "allow_spinning": 0,
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "shapes": {
            "msda": {
                "batch": 1,
                "levels": MSDA_LEVELS,
                "heads": MSDA_HEADS,
                "head_dim": MSDA_HEAD_DIM,
                "points": MSDA_POINTS,
                "sampling_offset_pixels": OFFSET_PIXELS,
            },
            "topk": {
                "batch": 1,
                "queries": TOPK_QUERIES,
                "channels": TOPK_CHANNELS,
                "heads": TOPK_HEADS,
                "level0": TOPK_LEVEL0,
                "window": TOPK_WINDOW,
                "divisor": TOPK_DIVISOR,
                "mode": "window",
            },
        },
        "results": results,
    }
    for r in results.values():
        print(
            f"{r['op']}: baseline {r['baseline_median_ms']:.2f} ms, candidate {r['candidate_median_ms']:.2f} ms, "
            f"×{r['speedup_baseline_over_candidate']:.2f}; output max abs diff {r['output_max_abs_diff']:.3g} "
            f"(bit-identical: {r['output_bit_identical']})"
        )
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{dt.date.today().isoformat()}_ort_ops_{args.label}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
