"""`faseg info`: parameters, MACs (+ FLOPs = 2·MACs) and a per-module breakdown of a preset."""

from __future__ import annotations

import argparse
import json

from . import add_overrides


def run(args: argparse.Namespace) -> int:
    from faseg.model.presets import get_preset
    from faseg.model.summary import describe, parse_size

    cfg = get_preset(args.preset, args.overrides)
    size = parse_size(args.size) if args.size else cfg.default_input_size
    info = describe(cfg, size, max_depth=args.depth)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['preset']} at {size[0]}x{size[1]}")
    print(f"  params  {info['params'] / 1e6:10.2f} M")
    print(f"  MACs    {info['macs'] / 1e9:10.2f} G   (FLOPs {info['flops'] / 1e9:.2f} G)")
    for name, row in info["modules"].items():
        indent = "  " * name.count(".")
        print(f"    {indent}{name:<40} {row['macs'] / 1e9:9.3f} GMACs {row['params'] / 1e6:9.3f} M params")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="parameters, MACs and a per-module breakdown of a preset")
    parser.add_argument("--preset", default="faseg_r50_ade20k", help="preset name (default: faseg_r50_ade20k)")
    parser.add_argument("--size", help="input HxW, multiples of 32 (default: the preset's input size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--depth",
        type=int,
        default=2,
        help="module depth of the breakdown (default 2; 3 shows e.g. sem_seg_head.pixel_decoder.transformer)",
    )
    add_overrides(parser)
    parser.set_defaults(func=run)
