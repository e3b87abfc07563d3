"""`faseg export <target>`: deployable artifacts from a checkpoint.

Targets are sub-subcommands, one ``_register_<target>`` function each, listed in :data:`TARGETS`:

- ``onnx``: one ONNX file per input bucket (:mod:`faseg.export.onnx_export`).
- ``trt``: a TensorRT engine from an exported ONNX file (``faseg/commands/export_trt.py``).

A new target is one more ``_register_<target>`` function appended to :data:`TARGETS`; each keeps its
heavy imports inside its command function so ``faseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import CLIError

if TYPE_CHECKING:
    from faseg.export.quantize import Calibration


def _calibration(args: argparse.Namespace) -> Calibration | None:
    from faseg.export.quantize import Calibration, QuantizationError, calibration_dataset

    if args.precision != "int8":
        if args.calibration is not None:
            raise CLIError("--calibration is only used with --precision int8")
        return None
    if not args.calibration:
        raise CLIError(
            "--precision int8 needs calibration images: --calibration DATA, a dataset spec as `faseg eval --data` "
            "takes it (synthetic:val, folder:PATH, ade20k:PATH, cityscapes:PATH)"
        )
    try:
        calibration_dataset(args.calibration)  # a spec without images fails here, before the export starts
        return Calibration(args.calibration, args.calibration_images)
    except QuantizationError as exc:
        raise CLIError(str(exc)) from None


def run_onnx(args: argparse.Namespace) -> int:
    from faseg.export.onnx_export import ExportOptions, export_checkpoint
    from faseg.model.demo import demo_checkpoint_dir
    from faseg.model.summary import parse_size

    calibration = _calibration(args)
    options = ExportOptions(
        size=parse_size(args.size) if args.size else None,
        flavour=args.flavour,
        precision=args.precision,
        outputs=args.outputs,
        opset=args.opset,
        optimize=not args.no_optimize,
        slim=args.slim,
        calibration=calibration,
    )
    if not str(args.out).endswith(".onnx"):
        raise CLIError(f"--out {args.out!r} must name a .onnx file")
    result = export_checkpoint(args.checkpoint or demo_checkpoint_dir(), args.out, options)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0
    h, w = result.input_size
    print(f"wrote {result.path} ({result.file_bytes / 1e6:.1f} MB)")
    print(
        f"  {result.flavour} flavour, {result.precision}, opset {result.opset}, IR {result.ir_version}, "
        f"{result.num_nodes} nodes"
    )
    print(f"  input  images uint8 [N, {h}, {w}, 3] (NHWC RGB 0-255)")
    for name, info in result.outputs.items():
        print(f"  output {name} {info['dtype']} {info['shape']}")
    if result.custom_nodes:
        print("  custom nodes: " + ", ".join(f"{k} x{v}" for k, v in result.custom_nodes.items()))
    int8 = next((step.details for step in result.steps if step.step == "int8"), None)
    if int8 is not None:
        print(
            f"  int8: {int8['quantized_nodes']} Conv/MatMul nodes quantised, {int8['float_nodes']} kept fp32, "
            f"calibrated on {int8['calibration_images']} images of {args.calibration}"
        )
    return 0


def _register_onnx(targets: argparse._SubParsersAction) -> None:
    parser = targets.add_parser(
        "onnx",
        help="ONNX file for one input bucket (fixed HxW, dynamic batch)",
        description="Export a checkpoint to ONNX: input images uint8 [N,H,W,3] RGB, outputs labels/confidence "
        "(and raw logits on request), faseg.* metadata. See docs/export.md.",
    )
    parser.add_argument(
        "--checkpoint", help="checkpoint directory (save_pretrained layout; default: the bundled demo model)"
    )
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--size", help="input HxW, multiples of 32 (default: the checkpoint's input size)")
    parser.add_argument(
        "--flavour",
        choices=("portable", "plugin"),
        default="portable",
        help="portable: standard ONNX ops; plugin: FASeg custom ops (docs/plugin_contract.md)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="fp16: mixed fp16/fp32 graph for GPU runtimes (TensorRT, CUDA EP); int8: static QDQ int8 for CPU "
        "runtimes, needs --calibration; see docs/export.md §7",
    )
    parser.add_argument(
        "--calibration",
        metavar="DATA",
        help="int8: calibration images from a dataset spec (synthetic:val, folder:PATH, ade20k:PATH, ...)",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=16,
        metavar="N",
        help="int8: number of calibration images, spread over the dataset (default 16)",
    )
    parser.add_argument(
        "--outputs",
        default="labels,confidence",
        help="comma list of labels, confidence, logits (default: labels,confidence)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--no-optimize", action="store_true", help="keep the head's Einsum and ReduceMax/ArgMax as captured"
    )
    parser.add_argument("--slim", action="store_true", help="slim the graph with onnxslim (must be installed)")
    parser.add_argument("--json", action="store_true", help="print the export result as one JSON object")
    parser.set_defaults(func=run_onnx)


def _register_trt(targets: argparse._SubParsersAction) -> None:
    from .export_trt import register_trt

    register_trt(targets)


#: The register function of every `faseg export` target, in `faseg export --help` order.
TARGETS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_register_onnx, _register_trt)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint for deployment (onnx, ...)")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    for register_target in TARGETS:
        register_target(targets)
