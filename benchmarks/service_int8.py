"""The demo model over HTTP in int8 vs fp32 (issue 19's serving target: int8 ≥ 1.3× the fp32 images/s).

Both files are exported the way a user would (``faseg export onnx``, portable flavour, the checkpoint's input
size; int8 with ``--calibration synthetic:train``), served by two servers started side by side (an idle server
uses no CPU: ONNX Runtime's threads do not spin), and measured by closed-loop rounds at one concurrency that
alternate between them (fp32, int8, int8, fp32, ...), so slow drifts of a shared machine hit both. Each round
reports HTTP images/s, the server's CPU per image (from /proc) and the mean batch size the server formed;
the ratios int8 / fp32 (images/s) and fp32 / int8 (CPU per image) are taken pair by pair, and their
medians printed. Results go to ``benchmarks/results/DATE_service_int8.json``.

    .venv/bin/python benchmarks/service_int8.py                # 6 rounds of 10 s at concurrency 8
    .venv/bin/python benchmarks/service_int8.py --rounds 2 --seconds 3 --no-record    # a quick check
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

from faseg.bench.server_process import ServerProcess
from faseg.loadtest import LoadTestConfig
from faseg.loadtest import run as run_loadtest
from faseg.loadtest.images import parse_wxh, synthetic
from faseg.loadtest.report import environment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("fp32", "int8")


def export(out: Path, precision: str, calibration_images: int) -> list[str]:
    """Export the demo checkpoint (``faseg export onnx`` without ``--checkpoint``); returns the command."""
    command = [sys.executable, "-m", "faseg", "export", "onnx", "--out", str(out)]
    if precision == "int8":
        command += ["--precision", "int8", "--calibration", "synthetic:train"]
        command += ["--calibration-images", str(calibration_images)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return command[2:]


def measure(server: ServerProcess, payloads: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    config = LoadTestConfig(
        url=server.url,
        payloads=payloads,
        images=f"{len(payloads)} synthetic JPEGs of {args.image_size}",
        levels=[args.concurrency],
        duration_s=args.seconds,
        warmup_s=args.warmup,
        server_cpu=server.cpu_seconds,
        progress=None,
    )
    step = run_loadtest(config)["steps"][0]
    server_stats = step.get("server") or {}
    return {
        "images_per_s": step["images_per_s"],
        "p50_ms": step["latency_ms"]["p50"],
        "errors": step.get("errors"),
        "server_cpu_ms_per_image": server_stats.get("process_cpu_ms_per_image"),
        "mean_batch_size": server_stats.get("mean_batch_size"),
    }


def pair_ratios(rounds: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """int8 / fp32 images/s and fp32 / int8 CPU per image, for each (fp32, int8) pair of rounds."""
    ratios = []
    for index in range(0, len(rounds) - 1, 2):
        by = {r["precision"]: r for r in rounds[index : index + 2]}
        fp32, int8 = by["fp32"], by["int8"]
        cpu = None
        if fp32["server_cpu_ms_per_image"] and int8["server_cpu_ms_per_image"]:
            cpu = round(fp32["server_cpu_ms_per_image"] / int8["server_cpu_ms_per_image"], 3)
        ratios.append(
            {"images_per_s": round(int8["images_per_s"] / fp32["images_per_s"], 3), "server_cpu_per_image": cpu}
        )
    return ratios


def order(rounds: int) -> list[str]:
    """fp32, int8, int8, fp32, fp32, int8, ...: each pair alternates which precision goes first."""
    return [PRECISIONS[(i // 2 + i) % 2] for i in range(2 * rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32", type=Path, help="the fp32 ONNX file (default: export the demo model)")
    parser.add_argument("--int8", type=Path, help="the int8 ONNX file (default: export the demo model)")
    parser.add_argument("--calibration-images", type=int, default=16, help="int8 export calibration images (16)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per precision (6)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per round (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each round (2)")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (8)")
    parser.add_argument("--image-size", default="640x480", help="synthetic JPEG size WxH (640x480)")
    parser.add_argument("--server-args", default="", help="extra flags for both servers")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be ≥ 1 and --seconds > 0")

    workdir = Path(tempfile.mkdtemp(prefix="service_int8_"))
    files: dict[str, Path] = {}
    commands: dict[str, list[str] | None] = {}
    for precision in PRECISIONS:
        given = getattr(args, precision)
        if given is not None:
            if not given.is_file():
                parser.error(f"--{precision}: {given} does not exist")
            files[precision], commands[precision] = given, None
        else:
            files[precision] = workdir / f"demo_{precision}.onnx"
            print(f"exporting the demo model in {precision} ...", file=sys.stderr)
            commands[precision] = export(files[precision], precision, args.calibration_images)

    payloads = synthetic(8, parse_wxh(args.image_size))
    env = environment()
    rounds: list[dict[str, Any]] = []
    servers = {p: ServerProcess(files[p], args.server_args.split(), workdir / f"server_{p}.log") for p in PRECISIONS}
    try:
        for server in servers.values():
            server.start()
        for index, precision in enumerate(order(args.rounds)):
            result = {"round": index // 2 + 1, "precision": precision, **measure(servers[precision], payloads, args)}
            rounds.append(result)
            print(
                f"round {result['round']} {precision}: {result['images_per_s']:.2f} img/s, "
                f"server CPU {result['server_cpu_ms_per_image']} ms/image, batch {result['mean_batch_size']}",
                file=sys.stderr,
            )
    finally:
        for server in servers.values():
            server.stop()

    ratios = pair_ratios(rounds)
    median_http = statistics.median(r["images_per_s"] for r in ratios)
    cpu_values = [r["server_cpu_per_image"] for r in ratios if r["server_cpu_per_image"] is not None]
    report = {
        "benchmark": "service_int8",
        "environment": env,
        "files": {p: str(files[p]) for p in PRECISIONS},
        "export_commands": commands,
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "images": f"8 synthetic JPEGs of {args.image_size}",
            "server_args": servers["fp32"].args,
        },
        "rounds": rounds,
        "ratios_per_pair": ratios,
        "median_ratio_images_per_s": median_http,
        "median_ratio_server_cpu_per_image": statistics.median(cpu_values) if cpu_values else None,
        "target_images_per_s_ratio": 1.3,
    }
    print(f"int8 / fp32 HTTP images/s per pair: {[r['images_per_s'] for r in ratios]} (median {median_http:.3f})")
    print(f"fp32 / int8 server CPU per image per pair: {[r['server_cpu_per_image'] for r in ratios]}")
    if not args.no_record:
        out = RESULTS / f"{env['date']}_service_int8.json"
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"recorded {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
