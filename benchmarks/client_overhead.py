"""CPU cost per request of the load generator's two HTTP clients (aiohttp vs httpx), side by side.

The client shares the 2 CPU cores of the development machines with the server, so every millisecond of
client CPU per request is taken from the server: ``faseg loadtest`` uses the leaner client by default.
One server, the same images and concurrency; the clients alternate (aiohttp, httpx, aiohttp, httpx, ...)
and their CPU time (``getrusage``) over each measurement window is divided by its requests.

    .venv/bin/python benchmarks/client_overhead.py --model model.onnx      # records benchmarks/results/
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLIENTS = ("aiohttp", "httpx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported .onnx file to serve")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="measurements per client (alternating)")
    parser.add_argument("--size", default="320x240", help="synthetic JPEG size WxH")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_client_overhead.json)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from faseg.bench.service_bench import ServerProcess
    from faseg.loadtest import LoadTestConfig, run
    from faseg.loadtest.images import parse_wxh, synthetic
    from faseg.loadtest.report import environment

    env = environment()
    payloads = synthetic(8, parse_wxh(args.size))
    per_client: dict[str, list[dict]] = {c: [] for c in CLIENTS}
    with ServerProcess(Path(args.model)) as server:
        for _ in range(args.rounds):
            for client in CLIENTS:
                config = LoadTestConfig(
                    url=server.url,
                    payloads=payloads,
                    images=f"synthetic JPEG {args.size} x8",
                    levels=[args.concurrency],
                    duration_s=args.duration,
                    warmup_s=1.0,
                    client=client,
                    progress=None,
                )
                [step] = run(config)["steps"]
                per_client[client].append(step)
                print(
                    f"{client}: {step['requests']} requests, client CPU {step['client']['cpu_seconds']} s",
                    file=sys.stderr,
                )
    clients = {}
    for client, steps in per_client.items():
        requests = sum(s["requests"] for s in steps)
        cpu = sum(s["client"]["cpu_seconds"] for s in steps)
        clients[client] = {
            "requests": requests,
            "client_cpu_ms_per_request": round(cpu / requests * 1e3, 3) if requests else None,
            "images_per_s": round(statistics.fmean(s["images_per_s"] for s in steps), 2),
            "p50_ms": round(statistics.median(s["latency_ms"]["p50"] for s in steps), 2),
        }
    lean = min(CLIENTS, key=lambda c: clients[c]["client_cpu_ms_per_request"] or float("inf"))
    other = next(c for c in CLIENTS if c != lean)
    factor = clients[other]["client_cpu_ms_per_request"] / clients[lean]["client_cpu_ms_per_request"]
    report = {
        "benchmark": "client_overhead",
        "date": env["date"],
        "command": "python benchmarks/client_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": env,
        "label": f"served model {Path(args.model).name}, concurrency {args.concurrency}, {args.rounds} rounds each",
        "clients": clients,
        "conclusion": f"{lean} uses {factor:.1f}x less client CPU per request than {other}; "
        f"faseg loadtest defaults to {lean} when it is installed.",
    }
    print(json.dumps(report, indent=2))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS / f"{env['date']}_client_overhead.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
