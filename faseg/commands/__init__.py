"""One module per `faseg` subcommand. Each module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).

Modules import torch and the layers lazily inside their command functions, so ``faseg --help`` stays fast.
"""

from __future__ import annotations

import argparse

# The order here is the order of `faseg --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "info",
    "train",
    "eval",
    "demo_model",
    "convert",
    "export",
    "verify",
    "serve",
    "bench",
    "loadtest",
    "doctor",
)


class CLIError(Exception):
    """A user error: printed as one line on stderr, exit code 2."""


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The shared ``--set key=value`` option (dotted config keys, JSON values)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (dotted key, JSON value), repeatable",
    )


def add_kernels_option(parser: argparse.ArgumentParser) -> None:
    """The shared ``--kernels auto|on|off`` option (``faseg.model.ops.kernels.select_kernels``)."""
    parser.add_argument(
        "--kernels",
        choices=("auto", "on", "off"),
        default="auto",
        help="FASeg's fused CUDA kernels for the attention ops (auto: on CUDA when the kernel library is built; "
        "on: fail if they cannot run; off: PyTorch references)",
    )
