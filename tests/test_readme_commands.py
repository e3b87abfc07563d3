"""Every `faseg ...` command line of README.md and docs/*.md parses against the CLI, and the ones listed in
:data:`RUNNABLE` run here as written.

Command lines are taken from fenced code blocks (continuation backslashes joined, trailing ``# comments``
dropped). A line with ``...`` is an elision: only its subcommand is checked; in a usage synopsis
(``[--opt VALUE]``, ``a|b``) the optional parts are parsed as given, with the first alternative. The end-to-end journeys
(tests/journeys/) run the README's serve / train / eval / convert / export / verify / loadtest lines with
real files; what is listed here needs nothing but this checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from faseg.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: Lines that run as written (exact text as it appears in the docs, comment dropped).
RUNNABLE = (
    "faseg info --preset faseg_tiny --set decoder.positional_queries=dynamic_anchor",
    "faseg doctor",
)


def command_lines() -> list[tuple[str, str]]:
    """(where, command) for each `faseg` command in a code block of the docs."""
    found = []
    for path in DOCS:
        for block in FENCE.findall(path.read_text()):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                if not line.startswith("faseg "):
                    continue
                command = line.split(" #", 1)[0].strip()
                found.append((f"{path.relative_to(REPO)}: {command}", command))
    return found


COMMANDS = command_lines()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 30
    shown = {command for _, command in COMMANDS}
    assert set(RUNNABLE) <= shown, sorted(set(RUNNABLE) - shown)


@pytest.mark.parametrize("command", [c for _, c in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_command_parses(command: str) -> None:
    argv = shlex.split(command)[1:]
    parser = build_parser()
    if "..." in argv:  # an elision: the subcommand (and target) must exist
        argv = argv[: argv.index("...")]
        subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert argv and argv[0] in subcommands.choices, command
        return
    if any(a.startswith("[") for a in argv):  # a usage synopsis: optional parts given, first alternative taken
        argv = [a.strip("[]").split("|")[0] for a in argv]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{command!r} does not parse: {stderr.getvalue().strip()}", pytrace=False)
    assert callable(args.func)


@pytest.mark.parametrize("command", RUNNABLE)
def test_runnable_command_runs(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out.strip()
