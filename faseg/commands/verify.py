"""`faseg verify`: compare an exported file with torch on sample photos and random images.

Prints one JSON object with ``--json`` (a key per runtime: ``onnxruntime``, ``tensorrt``). Exit code 0 when
every runtime that ran is within tolerance, 1 when a tolerance is missed (or a requested engine could not
run), 2 on errors.
"""

from __future__ import annotations

import argparse
import json


def _measured(row: dict) -> str:
    keys = ("label_agreement", "logits_max_abs", "logits_max_rel", "logits_median_abs", "confidence_max_abs")
    return ", ".join(f"{key} {row[key]:.6g}" for key in keys if row.get(key) is not None)


def run(args: argparse.Namespace) -> int:
    from faseg.export.verify import verify

    report = verify(
        args.onnx,
        args.checkpoint,
        engine=args.engine,
        tensorrt=args.tensorrt,
        batch_size=args.batch_size,
        n_random=args.random,
        device=args.device,
        intra_op_threads=args.threads,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{report['onnx']} ({report['flavour']}, {report['precision']}) vs torch on "
            f"{len(report['images'])} images at {report['input_size'][0]}x{report['input_size'][1]}"
        )
        for runtime in ("onnxruntime", "tensorrt"):
            row = report[runtime]
            measured = _measured(row)
            print(f"  {runtime:<12} {row['status']}" + (f": {measured}" if measured else ""))
            for failure in row.get("failures", []):
                print(f"    {failure}")
        spread = report["torch"].get("spread")
        if spread is not None:
            a, b = spread["threads"]
            print(f"  torch itself, {a} vs {b} threads (noise floor, not gated): {_measured(spread)}")
        print("PASSED" if report["passed"] else "FAILED")
    return 0 if report["passed"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="compare an exported ONNX file (and TensorRT engine) with torch")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: the bundled demo model)")
    parser.add_argument("--onnx", required=True, help="the exported .onnx file")
    parser.add_argument("--engine", help="a TensorRT engine built from it (requires TensorRT)")
    parser.add_argument(
        "--tensorrt",
        choices=("auto", "on", "off"),
        default="auto",
        help="try TensorRT when importable (auto), require it (on) or skip it (off)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="images per run (default 2)")
    parser.add_argument("--random", type=int, default=2, help="random images besides the sample photos (default 2)")
    parser.add_argument(
        "--device", choices=("cpu", "auto", "cuda"), default="cpu", help="onnxruntime device (default cpu)"
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
