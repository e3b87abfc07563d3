"""The `faseg` command line: one entry point, one subcommand per job (DESIGN §2).

Every subcommand that builds a model accepts ``--set key=value`` overrides with dotted keys
(``--set decoder.num_queries=50``); values are JSON where they parse, strings otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (dotted key, JSON value), repeatable",
    )


def cmd_info(args: argparse.Namespace) -> int:
    from faseg.model.presets import get_preset
    from faseg.model.summary import describe, parse_size

    cfg = get_preset(args.preset, args.overrides)
    size = parse_size(args.size) if args.size else cfg.default_input_size
    info = describe(cfg, size)
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


def build_parser() -> argparse.ArgumentParser:
    from faseg import __version__

    parser = argparse.ArgumentParser(prog="faseg", description="FASeg semantic segmentation: train, export, serve.")
    parser.add_argument("--version", action="version", version=f"faseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameters, MACs and a per-module breakdown of a preset")
    info.add_argument("--preset", default="faseg_r50_ade20k", help="preset name (default: faseg_r50_ade20k)")
    info.add_argument("--size", help="input HxW, multiples of 32 (default: the preset's input size)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    _add_overrides(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"faseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
