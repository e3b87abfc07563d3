"""Run import-linter's ``lint-imports`` over the package as it is installed.

The import package ``faseg`` is assembled from top-level folders (``model/`` is ``faseg.model``, see
``[tool.setuptools] package-dir`` in pyproject.toml). import-linter (through grimp) finds modules by walking the
root package's folder, which here holds only the CLI. So this script lays out the wheel's tree as symbolic links
in a temporary folder (``faseg/`` with ``model``, ``export`` and ``service`` beside the CLI's files), puts it first
on ``PYTHONPATH`` and runs ``lint-imports`` against the contracts in ``[tool.importlinter]``.

    python .ci/lint_imports.py [--root REPO] [lint-imports options...]

Exit status: that of ``lint-imports`` (0 when every contract is kept).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT_PACKAGE = "faseg"


def stage_package(root: Path, dest: Path) -> Path:
    """Lay out ``faseg`` under ``dest`` as the wheel has it, with links into ``root``; return ``dest``."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    package_root = dest / ROOT_PACKAGE
    package_root.mkdir(parents=True)
    for entry in (root / package_dir[ROOT_PACKAGE]).iterdir():
        if entry.name != "__pycache__":
            (package_root / entry.name).symlink_to(entry.resolve())
    for name, folder in sorted(package_dir.items()):
        parts = name.split(".")
        # Only direct children of the root that live elsewhere: deeper ones come with their parent folder.
        if len(parts) == 2 and parts[0] == ROOT_PACKAGE and not (package_root / parts[1]).exists():
            (package_root / parts[1]).symlink_to((root / folder).resolve(), target_is_directory=True)
    return dest


def run_lint_imports(root: Path, extra_args: list[str]) -> int:
    """Stage the tree of ``root`` and run ``lint-imports`` with its pyproject.toml; return the exit status."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="faseg-imports-") as tmp:
        staged = stage_package(root, Path(tmp))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(staged), os.environ.get("PYTHONPATH")]))}
        command = [str(lint_imports), str(root / "pyproject.toml"), "--no-cache", "--no-logo", *extra_args]
        # lint-imports puts its working directory first on sys.path: run it from the staged tree.
        return subprocess.run(command, cwd=staged, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="repository root")
    args, extra = parser.parse_known_args()
    return run_lint_imports(args.root.resolve(), extra)


if __name__ == "__main__":
    sys.exit(main())
