"""Model repositories for the repository tests: the demo model exported at 256×256 and 256×512 (one file
per bucket) and the toy colour classifier (another class set)."""

from __future__ import annotations

import shutil
from pathlib import Path

from faseg.export.onnx_export import ExportOptions, export_checkpoint
from faseg.model.demo import demo_checkpoint_dir
from service_toy_model import export_toy_onnx

SQUARE = (256, 256)
WIDE = (256, 512)


def export_demo(out_dir: Path) -> dict[tuple[int, int], Path]:
    """The demo model as ONNX at both buckets (10–20 s each on a loaded machine)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for size in (SQUARE, WIDE):
        path = out_dir / f"demo_{size[0]}x{size[1]}.onnx"
        export_checkpoint(demo_checkpoint_dir(), path, ExportOptions(flavour="portable", size=size))
        files[size] = path
    return files


def place(file: Path, repository: Path, model: str, version: int | str, name: str | None = None) -> Path:
    """Copy ``file`` into ``repository/model/version/``."""
    target = repository / model / str(version) / (name or file.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    return target


def toy_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return export_toy_onnx(directory / "toy.onnx")
