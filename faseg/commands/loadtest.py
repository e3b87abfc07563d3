"""`faseg loadtest`: drive a running server with a concurrency sweep (closed loop) or Poisson arrivals at
given rates (open loop); write report.json, report.csv and latency_throughput.png."""

from __future__ import annotations

import argparse
import sys

from . import CLIError

EXIT_OK = 0
EXIT_FAILED = 1  # server unreachable, or every request failed


def parse_list(text: str, kind: type, name: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{name} must be a comma-separated list of numbers, not {text!r}") from None
    if not values:
        raise CLIError(f"{name} is empty")
    return values


def payloads_from_args(args: argparse.Namespace) -> tuple[list, str]:
    """The request bodies (and their description) that --images / --synthetic ask for."""
    from faseg.loadtest.images import load_folder, parse_wxh, synthetic

    if args.images:
        return load_folder(args.images), f"folder {args.images}"
    size = parse_wxh(args.synthetic_size)
    return (
        synthetic(args.synthetic_count, size, seed=args.seed),
        f"synthetic JPEG {size[0]}x{size[1]} x{args.synthetic_count}",
    )


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--images", metavar="DIR", help="send the .jpg/.png/.webp files of DIR (round robin)")
    images.add_argument("--synthetic", action="store_true", help="send synthetic JPEGs (the default)")
    parser.add_argument("--synthetic-size", default="640x480", metavar="WxH", help="synthetic image size (640x480)")
    parser.add_argument("--synthetic-count", type=int, default=16, metavar="N", help="synthetic images (16)")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="measured seconds per step (10)")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S", help="unmeasured seconds per step (2)")
    parser.add_argument("--outputs", default="stats", help="outputs= of each request (stats)")
    parser.add_argument("--model", help="model= of each request (a model repository server; default: its default)")
    parser.add_argument("--bucket", help="bucket= of each request: HxW or auto (default: the model's default)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="S", help="client timeout per request (30)")
    parser.add_argument(
        "--client",
        choices=("auto", "aiohttp", "httpx"),
        default="auto",
        help="HTTP client library (auto: aiohttp when installed, else httpx)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic images and Poisson arrivals")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from faseg.loadtest import LoadTestConfig, ServerUnreachable, write_report
    from faseg.loadtest import run as run_loadtest

    if args.rate:
        mode, levels = "open", parse_list(args.rate, float, "--rate")
    else:
        mode, levels = "closed", parse_list(args.concurrency or "1,2,4,8,16", int, "--concurrency")
    payloads, description = payloads_from_args(args)
    config = LoadTestConfig(
        url=args.url,
        payloads=payloads,
        images=description,
        mode=mode,
        levels=levels,
        duration_s=args.duration,
        warmup_s=args.warmup,
        endpoint=args.endpoint,
        outputs=args.outputs,
        model=args.model,
        bucket=args.bucket,
        timeout_s=args.timeout,
        client=args.client,
        seed=args.seed,
        max_inflight=args.max_inflight,
        progress=None if args.quiet else sys.stderr,
    )
    try:
        report = run_loadtest(config)
    except ServerUnreachable as exc:
        print(f"faseg loadtest: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.label:
        report["label"] = args.label
    files = write_report(report, Path(args.out))
    if not args.quiet:
        print(f"wrote {files['json']}, {files['csv']}" + (f", {files['png']}" if files["png"] else ""), file=sys.stderr)
        if files["png"] is None:
            print(
                "latency_throughput.png skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr
            )
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    if report["summary"]["successes"] == 0:
        print("faseg loadtest: every request failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "loadtest",
        help="load-test a running server (concurrency sweep or Poisson rates); JSON/CSV report and plot",
        description="Closed-loop concurrency sweep (default 1,2,4,8,16) or open-loop Poisson arrivals (--rate) "
        "against POST /v1/segment of a running server. Per step: images/s, p50/p90/p95/p99/max latency, errors "
        "by status, and the server's stage breakdown from /metrics. Exit 1 if the server is unreachable or "
        "every request failed. The client's CPU use counts against the server when both share a machine.",
    )
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report.json/.csv/.png")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", metavar="C[,C...]", help="closed loop: concurrent clients per step")
    load.add_argument("--rate", metavar="R[,R...]", help="open loop: Poisson arrivals, requests/s per step")
    parser.add_argument("--max-inflight", type=int, default=1024, help="open loop: most outstanding requests")
    parser.add_argument("--endpoint", default="/v1/segment", help="path of the segment route (/v1/segment)")
    add_image_arguments(parser)
    add_client_arguments(parser)
    parser.add_argument("--json", action="store_true", help="also print the report as JSON on stdout")
    parser.add_argument("--label", help="a note stored in the report (e.g. which model the server runs)")
    parser.set_defaults(func=run)
