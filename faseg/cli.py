"""The `faseg` command line: one entry point, one subcommand per job.

Subcommands live in :mod:`faseg.commands` (one module each). Every subcommand that builds a model accepts
``--set key=value`` overrides with dotted keys (``--set decoder.num_queries=50``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from faseg import __version__
from faseg.commands import COMMAND_MODULES, CLIError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faseg", description="FASeg semantic segmentation: train, export, serve.")
    parser.add_argument("--version", action="version", version=f"faseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"faseg.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"faseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
