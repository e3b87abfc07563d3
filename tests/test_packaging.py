"""pyproject.toml must list every package folder, or a non-editable install silently drops code."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"faseg": "faseg", "model": "faseg.model", "export": "faseg.export", "service": "faseg.service"}


def _package_folders() -> dict[str, str]:
    found = {}
    for folder, dotted in LAYERS.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            name = ".".join([dotted, *rel.parts]) if rel.parts else dotted
            found[name] = str(init.parent.relative_to(ROOT))
    return found


def test_every_package_folder_is_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = _package_folders()
    assert sorted(config["packages"]) == sorted(folders)
    assert config["package-dir"] == folders
