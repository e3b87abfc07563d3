"""The server's CPU per rejected request: refused at the ASGI layer (``early_rejection``, the default) vs by the
routes (``--no-early-rejection``: routing, parameter parsing, dependencies, then the route's own check).

Under overload most answers are refusals, and on a CPU server they share the cores with the model (issue 20:
295,000 answers of 429 in 10 minutes). This script starts two servers on a model that costs next to nothing,
one per variant, and sends rounds of requests that are all refused, alternating the variants round by round;
the server's CPU seconds are read from /proc/<pid>/stat before and after every round. Kinds of refusal:

- ``queue_full`` (429): the queue (``--max-queue-size 1``) is kept full by one request that waits in it (a long
  ``--max-queue-delay-ms`` and a batch size it never fills); the others carry a real JPEG;
- ``too_large`` (413): ``Content-Length`` over ``--max-body-bytes``;
- ``unsupported_type`` (415): ``Content-Type: text/plain``.

    .venv/bin/python benchmarks/rejection_cost.py                     # records benchmarks/results/
    .venv/bin/python benchmarks/rejection_cost.py --requests 500 --rounds 2 --no-record
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from service_cpu_overhead import tiny_model

from faseg.bench.service_bench import ServerProcess
from faseg.loadtest import synthetic
from faseg.loadtest.client import make_transport
from faseg.loadtest.report import environment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MAX_BODY_BYTES = 65_536
HOLD_DELAY_MS = 10_000  # how long the holder's image waits in the queue for company
SERVER_ARGS = [
    "--max-queue-size", "1", "--max-batch-size", "2", "--max-queue-delay-ms", str(HOLD_DELAY_MS),
    "--default-timeout-ms", "3600000", "--max-body-bytes", str(MAX_BODY_BYTES),
    "--decode-threads", "1", "--encode-threads", "1",
]  # fmt: skip
VARIANTS = {"route": ["--no-early-rejection"], "asgi": []}
EXPECTED = {"queue_full": 429, "too_large": 413, "unsupported_type": 415}


def requests_for(kind: str, jpeg: bytes) -> tuple[bytes, str]:
    """(body, content type) of a request refused for ``kind``."""
    if kind == "too_large":
        return b"\xff" * (MAX_BODY_BYTES + 1), "image/jpeg"
    if kind == "unsupported_type":
        return jpeg, "text/plain"
    return jpeg, "image/jpeg"


class QueueHolder:
    """Keeps one image waiting in a server's queue (re-sent as soon as it is answered), so the queue is full."""

    def __init__(self, url: str, jpeg: bytes) -> None:
        self.url, self.jpeg = url, jpeg
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=HOLD_DELAY_MS / 1000 * 3) as client:
            while not self.stop.is_set():
                client.post(self.url + "/v1/segment", content=self.jpeg, headers={"Content-Type": "image/jpeg"})

    def __enter__(self) -> QueueHolder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


async def _send_all(url: str, body: bytes, content_type: str, count: int, concurrency: int) -> dict[str, int]:
    statuses: dict[str, int] = {}
    remaining = iter(range(count))
    async with make_transport("auto", concurrency, 30.0) as transport:

        async def worker() -> None:
            for _ in remaining:
                try:
                    status, _ = await transport.post(url, body, content_type)
                except Exception as exc:  # a transport failure is counted, not fatal
                    status = type(exc).__name__
                statuses[str(status)] = statuses.get(str(status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def round_cost(server: ServerProcess, kind: str, jpeg: bytes, count: int, concurrency: int) -> dict[str, Any]:
    body, content_type = requests_for(kind, jpeg)
    before = server.cpu_seconds()
    statuses = asyncio.run(_send_all(server.url + "/v1/segment", body, content_type, count, concurrency))
    cpu = server.cpu_seconds() - before
    refused = statuses.get(str(EXPECTED[kind]), 0)
    return {
        "statuses": statuses,
        "server_cpu_s_per_1000": round(cpu * 1000 / max(refused, 1), 4),
    }


def wait_for_full_queues(servers: Any, jpeg: bytes, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    for server in servers:
        while httpx.post(server.url + "/v1/segment", content=jpeg, headers={"Content-Type": "image/jpeg"},
                         timeout=60).status_code != 429:  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the queue never filled")
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="refused requests per round (1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant and kind, alternated (3)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent client connections (8)")
    parser.add_argument("--kinds", default=",".join(EXPECTED), help=f"refusals to measure ({','.join(EXPECTED)})")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(EXPECTED))
    if unknown:
        parser.error(f"unknown kinds {unknown}")

    work = Path(tempfile.mkdtemp(prefix="rejection_cost_"))
    model = tiny_model(work / "tiny.onnx")
    jpeg = synthetic(1, (640, 480))[0].body
    servers = {
        name: ServerProcess(model, [*SERVER_ARGS, *extra], work / f"{name}.log") for name, extra in VARIANTS.items()
    }
    rounds: dict[str, dict[str, list[dict[str, Any]]]] = {k: {v: [] for v in VARIANTS} for k in kinds}
    try:
        for server in servers.values():
            server.start()
        # queue_full last: the holders keep the queues full (and would turn every other refusal into 429)
        for kind in sorted(kinds, key=lambda k: k == "queue_full"):
            holders = [QueueHolder(s.url, jpeg) for s in servers.values()] if kind == "queue_full" else []
            for holder in holders:
                holder.__enter__()
            if holders:
                wait_for_full_queues(servers.values(), jpeg)
            for index in range(args.rounds):
                order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
                for name in order:
                    result = round_cost(servers[name], kind, jpeg, args.requests, args.concurrency)
                    rounds[kind][name].append(result)
                    print(f"round {index + 1} {kind:>16} {name:>5}: {json.dumps(result)}", file=sys.stderr)
            for holder in holders:
                holder.__exit__()
    finally:
        for server in servers.values():
            server.stop()

    summary = {}
    for kind in kinds:
        medians = {v: statistics.median(r["server_cpu_s_per_1000"] for r in rounds[kind][v]) for v in VARIANTS}
        summary[kind] = {
            "status": EXPECTED[kind],
            "route_server_cpu_s_per_1000": medians["route"],
            "asgi_server_cpu_s_per_1000": medians["asgi"],
            "asgi_over_route": round(medians["asgi"] / medians["route"], 3) if medians["route"] else None,
        }
    print(json.dumps(summary, indent=1))
    if args.no_record:
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    env = environment()
    result = {
        "benchmark": "rejection_cost",
        "environment": env,
        "commit": commit.stdout.strip() or None,
        "command": "python benchmarks/rejection_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "server CPU seconds (utime + stime of /proc/<pid>/stat) per 1000 refused requests; 'route': "
        "refused by the routes (--no-early-rejection), 'asgi': by the admission middleware; the variants "
        "alternate round by round, medians of the rounds",
        "settings": {
            "requests": args.requests,
            "rounds": args.rounds,
            "concurrency": args.concurrency,
            "server_args": SERVER_ARGS,
            "jpeg_bytes": len(jpeg),
        },
        "summary": summary,
        "rounds": rounds,
    }
    out = RESULTS / f"{env['date']}_rejection_cost.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"recorded {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
