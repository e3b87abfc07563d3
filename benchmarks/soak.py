"""Soak and overload runs (issue 20): mixed valid / hostile / abandoned traffic at a multiple of the measured
capacity for a given time; see faseg/loadtest/soak.py for what a run does and reports.

Starts the server itself (``--model``, plus ``--server-args``), so it can read the server's RSS and CPU from
/proc and check that SIGTERM ends it with exit code 0; or attaches to one (``--url``, and ``--server-pid`` for
/proc). The two recorded runs of the acceptance (docs/service.md, "Soak runs"):

    .venv/bin/python benchmarks/soak.py --duration 1800 --multiple 2 --tracemalloc --label soak_2x
    .venv/bin/python benchmarks/soak.py --duration 1800 --multiple 10 --ignore-retry-after --label overload_10x

A short check that everything works (about a minute):

    .venv/bin/python benchmarks/soak.py --duration 30 --capacity-s 10 --no-record
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from faseg.service.core.config import default_cache_dir
from faseg.service.core.default_model import resolve_default_model

from faseg.bench.service_bench import ServerProcess
from faseg.loadtest.images import load_folder, parse_wxh, synthetic
from faseg.loadtest.soak import SoakConfig, SoakError, run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# 33×4000 (a long thin strip) … 1920×1080, as in the overload run.
DEFAULT_SIZES = "320x240,640x480,1280x720,1920x1080,33x4000"
DEFAULT_SERVER_ARGS = "--max-queue-size 8"


def payloads(args: argparse.Namespace) -> list[Any]:
    if args.images:
        return load_folder(args.images)
    sizes = [parse_wxh(s) for s in args.sizes.split(",") if s]
    return [p for i, size in enumerate(sizes) for p in synthetic(1, size, seed=args.seed + i)]


def summary_lines(report: dict[str, Any]) -> list[str]:
    soak, checks, capacity = report["soak"], report["checks"], report["capacity"]
    lines = []
    if capacity:
        lines.append(f"capacity: {capacity['valid_goodput_per_s']} valid images/s ({capacity['clients']} clients)")
    lines += [
        f"soak: {soak['requests']} requests in {soak['seconds']} s: {soak['requests_per_s']}/s sent, "
        f"{soak['offered_requests_per_s']}/s offered",
        f"statuses: {json.dumps(soak['statuses'])}",
        f"valid goodput {soak['valid_goodput_per_s']}/s (ratio to capacity {checks['goodput_ratio']}), "
        f"p50 {soak['valid_latency_ms']['p50']} ms, p99 {soak['valid_latency_ms']['p99']} ms",
        f"5xx: {soak['server_errors_5xx']} (other than 503: {soak['server_errors_5xx_other_than_503']})",
        f"server CPU {soak.get('server_cpu')}, client CPU {soak['client_cpu']}",
        f"RSS {checks['rss']}",
        f"Python heap {checks['python_heap']}",
        f"ready after: {checks['ready_after']}, same answer: {checks['same_answer']}",
    ]
    if "server_exit_code" in report:
        lines.append(f"server exit code after SIGTERM: {report['server_exit_code']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="attach to a running server (default: start one)")
    target.add_argument("--model", type=Path, help="model of the server to start (default: the demo model)")
    parser.add_argument("--server-pid", type=int, help="with --url: its pid, for RSS and CPU from /proc")
    parser.add_argument(
        "--server-args", default=DEFAULT_SERVER_ARGS, help=f"flags of the started server ({DEFAULT_SERVER_ARGS!r})"
    )
    parser.add_argument("--tracemalloc", action="store_true", help="start the server with --tracemalloc (Python heap)")
    parser.add_argument("--duration", type=float, default=60.0, help="soak seconds (60)")
    parser.add_argument("--multiple", type=float, default=2.0, help="offered load, × measured capacity (2)")
    parser.add_argument("--clients", type=int, default=128, help="paced concurrent clients (128)")
    parser.add_argument("--capacity-s", type=float, default=20.0, help="capacity measurement seconds (20)")
    parser.add_argument("--capacity-clients", type=int, default=4, help="closed-loop clients measuring capacity (4)")
    parser.add_argument("--capacity-rps", type=float, help="skip the measurement: capacity in requests/s")
    parser.add_argument("--mix", default="0.8,0.1,0.1", help="valid,hostile,abandoned fractions (0.8,0.1,0.1)")
    parser.add_argument("--abandon-after-ms", type=float, default=50.0, help="abandoned clients close after (50)")
    parser.add_argument("--ignore-retry-after", action="store_true", help="clients do not wait after 429/503")
    parser.add_argument("--outputs", default="stats,rle,png,overlay", help="outputs sent in turn")
    parser.add_argument("--images", help="send the images of this folder instead of synthetic JPEGs")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"synthetic JPEG sizes ({DEFAULT_SIZES})")
    parser.add_argument("--rss-baseline-s", type=float, default=300.0, help="RSS growth from here to the end (300)")
    parser.add_argument("--api-key", help="sent as X-API-Key")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", default="soak", help="file name part and note of the result")
    parser.add_argument("--out", type=Path, help="write the report here (default benchmarks/results/DATE_LABEL.json)")
    parser.add_argument("--no-record", action="store_true", help="print the summary only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    try:
        valid, hostile, abandoned = (float(v) for v in args.mix.split(","))
    except ValueError:
        parser.error(f"--mix takes three fractions, e.g. 0.8,0.1,0.1, not {args.mix!r}")

    server: ServerProcess | None = None
    url, pid = args.url, args.server_pid
    if url is None:
        server_args = args.server_args.split() + (["--tracemalloc"] if args.tracemalloc else [])
        model = args.model if args.model is not None else resolve_default_model(default_cache_dir())
        log = Path(tempfile.mkdtemp(prefix="soak_")) / "server.log"
        server = ServerProcess(model, server_args, log_path=log).start()
        assert server.process is not None
        url, pid = server.url, server.process.pid
        print(f"server: pid {pid} at {url}, log {log}", file=sys.stderr)
    try:
        config = SoakConfig(
            url=url, payloads=payloads(args), duration_s=args.duration, multiple=args.multiple, clients=args.clients,
            capacity_s=args.capacity_s, capacity_clients=args.capacity_clients, capacity_rps=args.capacity_rps,
            valid_fraction=valid, hostile_fraction=hostile, abandoned_fraction=abandoned,
            abandon_after_ms=args.abandon_after_ms, ignore_retry_after=args.ignore_retry_after,
            rss_baseline_s=args.rss_baseline_s, server_pid=pid, api_key=args.api_key, seed=args.seed,
            outputs=[o for o in args.outputs.split(",") if o], progress=None if args.quiet else sys.stderr,
        )  # fmt: skip
        report = run(config)
    except (SoakError, ValueError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        exit_code = server.stop() if server is not None else None
    report["label"] = args.label
    if server is not None:
        report["server_exit_code"] = exit_code
        report["settings"]["server_args"] = server.args
    for line in summary_lines(report):
        print(line)
    if not args.no_record:
        out = args.out or RESULTS / f"{report['environment']['date']}_{args.label}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"recorded {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
