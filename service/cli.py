"""Command-line flags for the service, generated from ``Settings`` so the two never drift apart.

``add_arguments(parser)`` adds one ``--flag`` per setting (``max_batch_size`` → ``--max-batch-size``);
flags left out keep their environment / default value. ``faseg serve`` and ``python -m faseg.service``
both use it.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .core.config import Settings
from .core.default_model import DefaultModelUnavailable

EXIT_USAGE = 2


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse ``type`` and ``choices`` for a field annotation (``X | None`` → X)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in typing.get_args(annotation)]
    if annotation in (int, float, str, Path):
        return annotation, None
    return str, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = field.description or ""
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            continue
        flag_type, choices = _flag_type(field.annotation)
        parser.add_argument(
            flag, type=flag_type, choices=choices, default=argparse.SUPPRESS, help=help_text, metavar=None
        )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``Settings`` from the environment, overridden by the flags that were given."""
    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    return Settings(**overrides)


def serve(args: argparse.Namespace) -> int:
    """Build the settings from parsed flags and serve until SIGTERM; the exit code of the server."""
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    from .server import run  # imports uvicorn and the app only when serving

    try:
        return run(settings)
    except DefaultModelUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m faseg.service",
        description="Serve a FASeg model over HTTP (settings: flags, or FASEG_* environment variables).",
    )
    add_arguments(parser)
    return serve(parser.parse_args(argv))
