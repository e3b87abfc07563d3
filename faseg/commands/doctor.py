"""`faseg doctor`: what this install can do, and the command that fixes each missing part.

    faseg doctor            # one line per capability, with `fix:` lines for the missing ones
    faseg doctor --json     # {"faseg", "checks": [{name, ok, detail, fix, needed_for}], "missing"}

It only looks (nothing is built or downloaded) and exits 0 whatever is missing; ``--strict`` exits 1 when
something is.
"""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from faseg.doctor import format_report, report, run_checks

    checks = run_checks()
    print(json.dumps(report(checks), indent=2) if args.json else format_report(checks))
    return 1 if args.strict and not all(c.ok for c in checks) else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="what this install can do (custom ops, CUDA, TensorRT, providers, GPU, cache, demo model)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--strict", action="store_true", help="exit 1 when anything is missing")
    parser.set_defaults(func=run)
