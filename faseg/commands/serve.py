"""`faseg serve`: the HTTP service (flags generated from ``faseg.service`` Settings; FASEG_* env vars)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from faseg.service.cli import serve

    return serve(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    from faseg.service.cli import add_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (default: the bundled demo model on ONNX Runtime CPU at 127.0.0.1:8000)",
        description="Serve a FASeg model over HTTP. Every flag can also be set as a FASEG_* environment variable.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
