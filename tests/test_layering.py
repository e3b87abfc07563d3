"""The import contracts of pyproject.toml ``[tool.importlinter]`` hold, and break when the layering does.

``make lint`` runs the same check (``.ci/lint_imports.py``, which runs import-linter's ``lint-imports`` over the
package as it is installed). The broken cases copy the tree, put back one import the layering forbids, and
expect the contract that guards it to fail, so the check is shown able to fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "lint_imports.py"
PACKAGE_FOLDERS = ("faseg", "model", "export", "service")

LAYERS = "Layers: the CLI on top, then service, export, model"
MODEL_ACYCLIC = "No import cycles inside faseg.model or faseg.export"
EXPORT_OPS_INIT = "The modules of faseg.export.ops do not import their package's __init__"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    assert Path(sys.executable).with_name("lint-imports").is_file(), (
        "lint-imports is missing: install the dev extra (pip install -e '.[dev]')"
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True, text=True, timeout=240, check=False
    )


def _contract_lines(output: str) -> dict[str, str]:
    """Contract name (its first words) -> KEPT / BROKEN, from the report's summary lines.

    lint-imports wraps long names over two lines; the status is the last word of the second one.
    """
    text = " ".join(output.split())
    status = {}
    for name in (LAYERS, MODEL_ACYCLIC, EXPORT_OPS_INIT):
        start = text.find(name)
        assert start >= 0, f"contract {name!r} not in the report:\n{output}"
        rest = text[start:]
        kept, broken = rest.find(" KEPT"), rest.find(" BROKEN")
        status[name] = "BROKEN" if broken >= 0 and (kept < 0 or broken < kept) else "KEPT"
    return status


def _copy_tree(dest: Path) -> Path:
    """The Python sources and pyproject.toml of the repository, nothing else (no venv, no build)."""
    for folder in PACKAGE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            target = dest / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copyfile(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found (the test's violation no longer applies)"
    path.write_text(text.replace(old, new, 1))


def test_the_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ", 0 broken." in result.stdout, result.stdout
    assert set(_contract_lines(result.stdout).values()) == {"KEPT"}


VIOLATIONS = {
    # model must import nothing from export (DESIGN §2).
    "model imports export": (
        "model/config.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nfrom faseg.export import custom_ops  # noqa: F401\n",
        LAYERS,
    ),
    # export must import nothing from the service.
    "export imports service": (
        "export/verify.py",
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nimport faseg.service  # noqa: F401\n",
        LAYERS,
    ),
    # The Focus encoder's import reverted to the pixel decoder module, where the deformable encoder used to
    # live: the pixel decoder imports focus, so the cycle returns.
    "focus imports pixel_decoder again": (
        "model/focus.py",
        "from .deformable_encoder import",
        "from .pixel_decoder import",
        MODEL_ACYCLIC,
    ),
    # Checkpoint reading taken from detectron2.py again: detectron2 imports backbones, so the cycle returns.
    "backbones imports detectron2 again": (
        "model/convert/backbones.py",
        "from .files import",
        "from .detectron2 import",
        MODEL_ACYCLIC,
    ),
    # An op module importing the shared symbolic helpers from the package again: the package imports it.
    "export op imports its package": (
        "export/ops/ms_deform_attn.py",
        "from .symbolic import",
        "from . import",
        EXPORT_OPS_INIT,
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_violation_breaks_its_contract(case: str, tmp_path: Path) -> None:
    relative, old, new, contract = VIOLATIONS[case]
    root = _copy_tree(tmp_path / "repo")
    assert _lint_imports(root).returncode == 0  # the copy itself is clean
    _edit(root / relative, old, new)
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    status = _contract_lines(result.stdout)
    assert status[contract] == "BROKEN", result.stdout
    assert [name for name, s in status.items() if s == "BROKEN"] == [contract], result.stdout
