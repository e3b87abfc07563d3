"""`faseg export trt`: a strongly typed TensorRT engine (plus its metadata sidecar) from an ONNX file.

:func:`register_trt` adds the ``trt`` target to the ``faseg export`` sub-subparsers; the ``export``
command module calls it. See docs/tensorrt.md and :mod:`faseg.export.tensorrt_build`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import CLIError


def run_trt(args: argparse.Namespace) -> int:
    from faseg.export.tensorrt_build import BatchProfile, EngineBuildError, EngineBuildOptions, build_engine
    from faseg.model.summary import parse_size

    try:
        batch_profile = BatchProfile.parse(args.batch_profile)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if not Path(args.onnx).is_file():
        raise CLIError(f"--onnx {args.onnx!r} does not exist")
    options = EngineBuildOptions(
        batch_profile=batch_profile,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        plugin_libraries=tuple(Path(p) for p in args.plugins),
        workspace_gib=args.workspace_gib,
        tf32=not args.no_tf32,
        optimization_level=args.opt_level,
        input_size=parse_size(args.input_size) if args.input_size else None,
    )
    try:
        result = build_engine(args.onnx, args.out, options)
    except EngineBuildError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"wrote {result.engine} ({result.engine_bytes / 1e6:.1f} MB) in {result.seconds:.0f} s")
    print(f"  TensorRT {result.tensorrt_version}, strongly typed, precision {result.precision}")
    for name, shapes in result.profiles.items():
        print(f"  profile {name}: min {shapes['min']} opt {shapes['opt']} max {shapes['max']}")
    if result.plugin_layers:
        print(f"  plugin layers: {len(result.plugin_layers)} ({', '.join(map(str, result.plugin_libraries))})")
    print(f"  metadata {result.metadata_file}")
    if result.timing_cache:
        print(f"  timing cache {result.timing_cache}")
    return 0


def register_trt(targets: argparse._SubParsersAction) -> None:
    """Add ``trt`` to the sub-subparsers of ``faseg export``."""
    parser = targets.add_parser(
        "trt",
        help="TensorRT engine from an exported ONNX file (needs TensorRT and a GPU)",
        description="Build a strongly typed TensorRT engine (.plan) with one optimisation profile over the "
        "batch and a <plan stem>.json sidecar holding the model metadata. Plugin-flavour files need "
        "FASeg's plugin library. See docs/tensorrt.md.",
    )
    parser.add_argument("--onnx", required=True, help="ONNX file written by `faseg export onnx`")
    parser.add_argument("--out", required=True, help="engine file to write (e.g. model.plan)")
    parser.add_argument(
        "--batch-profile",
        default="1,4,8",
        metavar="MIN,OPT,MAX",
        help="batch sizes of the optimisation profile (default 1,4,8; one value = static batch)",
    )
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update")
    parser.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="LIB",
        help="plugin library to load (repeatable; default for plugin-flavour files: $FASEG_TRT_PLUGINS_LIB "
        "or build/cuda/tensorrt/libfaseg_trt_plugins.so)",
    )
    parser.add_argument("--input-size", metavar="HxW", help="fix dynamic spatial input dims (default: the ONNX's)")
    parser.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit (default 4)")
    parser.add_argument("--opt-level", type=int, choices=range(6), help="builder optimisation level 0-5")
    parser.add_argument("--no-tf32", action="store_true", help="disable TF32 for fp32 layers (tighter parity)")
    parser.add_argument("--json", action="store_true", help="print the build result as one JSON object")
    parser.set_defaults(func=run_trt)
