"""`faseg bench model` (backends × batch sizes × precisions) and `faseg bench service` (HTTP vs the raw
backend, in one run). Both print one JSON report with ``--json`` and can write it with ``--out``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import CLIError
from .loadtest import add_image_arguments, parse_list, payloads_from_args


def _parse_hxw(text: str) -> tuple[int, int]:
    """``--size``: the one H×W parser of the CLI (``faseg.model.summary.parse_size``), as a CLI error."""
    from faseg.model.summary import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise CLIError(f"--size: {exc}") from None


def _emit(report: dict, args: argparse.Namespace, out: Path | None) -> None:
    report["command"] = "faseg " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("faseg") else None
    if args.label:
        report["label"] = args.label
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}", file=sys.stderr)
    if args.json:
        print(text)


def run_model(args: argparse.Namespace) -> int:
    from faseg.bench.model_bench import BenchError, run_model_bench
    from faseg.model.demo import demo_checkpoint_dir

    try:
        report = run_model_bench(
            args.checkpoint or str(demo_checkpoint_dir()),
            backends=[b.strip() for b in args.backends.split(",") if b.strip()],
            precisions=[p.strip() for p in args.precision.split(",") if p.strip()],
            batches=parse_list(args.batch, int, "--batch"),
            size=_parse_hxw(args.size) if args.size else None,
            runs=args.runs,
            warmup=args.warmup,
            threads=args.threads,
            workdir=Path(args.workdir) if args.workdir else None,
            log=sys.stderr,
        )
    except BenchError as exc:
        raise CLIError(str(exc)) from None
    _emit(report, args, Path(args.out) if args.out else None)
    if not args.json:
        for batch, best in report["fastest"].items():
            print(f"batch {batch}: fastest {best['backend']}/{best['precision']} {best['images_per_s']:.2f} img/s")
    return 0


def _resolve_model(args: argparse.Namespace, out_dir: Path) -> Path:
    if args.model:
        model = Path(args.model)
        if model.suffix.lower() != ".onnx" or not model.is_file():
            raise CLIError(f"--model must be an existing .onnx file, not {args.model!r}")
        return model
    if args.checkpoint:
        from faseg.export.onnx_export import ExportOptions, export_checkpoint

        target = out_dir / "model.onnx"
        print(f"exporting {args.checkpoint} to {target} ...", file=sys.stderr)
        export_checkpoint(args.checkpoint, target, ExportOptions(flavour="portable"))
        return target
    from faseg.service.core.default_model import DefaultModelUnavailable, resolve_default_model

    try:
        return resolve_default_model()
    except DefaultModelUnavailable as exc:
        raise CLIError(str(exc)) from None


def run_service(args: argparse.Namespace) -> int:
    from faseg.bench.service_bench import run_service_bench

    out_dir = Path(args.out)
    model = _resolve_model(args, out_dir)
    payloads, description = payloads_from_args(args)
    report = run_service_bench(
        model,
        payloads,
        images=description,
        out_dir=out_dir,
        concurrency=parse_list(args.concurrency, int, "--concurrency"),
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_batch_size=args.max_batch_size,
        compare_batching=not args.no_batching_compare,
        batching_rounds=args.batching_rounds,
        raw_runs=args.raw_runs,
        paired_rounds=args.paired_rounds,
        paired_per_round=args.paired_per_round,
        throughput_rounds=args.throughput_rounds,
        throughput_duration_s=args.throughput_seconds,
        outputs=args.outputs,
        client=args.client,
        server_args=args.server_arg,
        log=sys.stderr,
    )
    _emit(report, args, out_dir / "service_bench.json")
    if not args.json:
        c = report["comparison"]
        print(
            f"HTTP {c['http_images_per_s']:.2f} img/s at c={c['best_concurrency']} (mean batch "
            f"{c['server_mean_batch_size']}) vs raw {c['raw_images_per_s_at_that_batch']:.2f} img/s: "
            f"sweep ratio {c['sweep_throughput_ratio']}, ratio {c['throughput_ratio']} ({c['throughput_source']}); "
            f"p50 at c=1 {c['http_p50_ms_c1']} ms vs raw {c['raw_batch1_p50_ms']} ms "
            f"(+{c['p50_overhead_ms_c1']} ms, {c['p50_source']})"
        )
        if "batching" in c:
            b = c["batching"]
            print(
                f"dynamic batching at c={b['concurrency']}: {b['images_per_s_with_batching']} img/s vs "
                f"{b['images_per_s_max_batch_size_1']} img/s with max_batch_size 1 (ratio {b['ratio']}, "
                f"median of {b['rounds']} alternating rounds)"
            )
        print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in c["targets_met"].items()))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: model (backends x batch sizes), service (HTTP vs raw)")
    targets = parser.add_subparsers(dest="target", required=True)

    model = targets.add_parser(
        "model",
        help="images/s and latency per backend x batch size x precision, side by side",
        description="Time the serving backends on one model, interleaved in one run.",
    )
    model.add_argument("--checkpoint", help="checkpoint directory or an .onnx file (default: the bundled demo model)")
    model.add_argument(
        "--backends",
        default="torch,onnxruntime",
        help="comma list of torch, onnxruntime, onnxruntime-plugin, tensorrt (default: torch,onnxruntime)",
    )
    model.add_argument("--batch", default="1,2,4,8", help="batch sizes (default 1,2,4,8)")
    model.add_argument("--precision", default="fp32", help="comma list of fp32, bf16, fp16 (default fp32)")
    model.add_argument("--size", help="input HxW (default: the checkpoint's input size)")
    model.add_argument("--runs", type=int, default=5, help="timed runs per configuration and batch size (5)")
    model.add_argument("--warmup", type=int, default=1, help="untimed runs first (1)")
    model.add_argument("--threads", type=int, default=0, help="intra-op threads for every backend (0: default)")
    model.add_argument("--workdir", help="where exported ONNX files are cached (default: a temporary folder)")
    model.add_argument("--out", help="also write the JSON report to this file")
    model.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    model.add_argument("--label", help="a note stored in the report (e.g. which model this is)")
    model.set_defaults(func=run_model)

    service = targets.add_parser(
        "service",
        help="the service's HTTP throughput vs the raw backend in one run (overhead ratio)",
        description="Start the server, sweep concurrency with the load generator, and time the raw backend at "
        "the same batch sizes before and after; also the effect of dynamic batching (max_batch_size 1).",
    )
    source = service.add_mutually_exclusive_group()
    source.add_argument("--model", help="an exported .onnx file (default: the bundled demo model)")
    source.add_argument("--checkpoint", help="a checkpoint directory, exported to ONNX first")
    service.add_argument("--out", required=True, metavar="DIR", help="folder for service_bench.json and reports")
    service.add_argument("--concurrency", default="1,2,4,8,16", help="closed-loop sweep (1,2,4,8,16)")
    service.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds per step (10)")
    service.add_argument("--warmup", type=float, default=2.0, metavar="S", help="unmeasured seconds per step (2)")
    service.add_argument("--max-batch-size", type=int, default=8, help="the server's max_batch_size (8)")
    service.add_argument("--no-batching-compare", action="store_true", help="skip the max_batch_size=1 server")
    service.add_argument("--batching-rounds", type=int, default=2, help="alternating rounds with/without batching")
    service.add_argument("--raw-runs", type=int, default=5, help="timed raw runs per batch size, before and after (5)")
    service.add_argument("--paired-rounds", type=int, default=5, help="rounds of the paired c=1 latency (5)")
    service.add_argument("--paired-per-round", type=int, default=10, help="HTTP requests and raw runs per round (10)")
    service.add_argument(
        "--throughput-rounds", type=int, default=16, help="rounds of HTTP at the best concurrency vs raw (16)"
    )
    service.add_argument(
        "--throughput-seconds", type=float, default=3.0, metavar="S", help="seconds of HTTP, then of raw, per round (3)"
    )
    service.add_argument("--outputs", default="stats", help="outputs= of each request (stats)")
    service.add_argument("--client", choices=("auto", "aiohttp", "httpx"), default="auto", help="HTTP client library")
    service.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    service.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the server, repeatable (e.g. --server-arg=--intra-op-threads --server-arg=2)",
    )
    add_image_arguments(service)
    service.add_argument("--json", action="store_true", help="print the JSON report on stdout")
    service.add_argument("--label", help="a note stored in the report (e.g. which model this is)")
    service.set_defaults(func=run_service)
