"""Where FASeg's native libraries are found: one locator for the ONNX Runtime custom-op library, the TensorRT
plugin library and the CUDA kernel library.

Rule, the same for every library: ``$<ENV>`` when set is the only candidate (a wrong path is reported, never
silently replaced by another build); otherwise the default locations in order (the repository's ``build/``
tree, then the file next to the package for installed builds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO_ROOT / "build"


@dataclass(frozen=True)
class NativeLibrary:
    """One native library: its file name, override variable, default locations and build command."""

    name: str
    env: str
    defaults: tuple[Path, ...]
    build_command: str
    #: What building it needs, for the missing-library message.
    needs: str = ""

    def override(self) -> Path | None:
        """``$<env>`` as a path, or None when unset."""
        value = os.environ.get(self.env)
        return Path(value).expanduser() if value else None

    def search_paths(self) -> list[Path]:
        """Where :meth:`find` looks, in order."""
        override = self.override()
        return [override] if override is not None else list(self.defaults)

    def find(self) -> Path | None:
        """The first existing candidate (resolved), or None."""
        for path in self.search_paths():
            if path.is_file():
                return path.resolve()
        return None

    def missing_message(self) -> str:
        """Why :meth:`find` found nothing and how to get the library."""
        paths = self.search_paths()
        if self.override() is not None:
            where = f"${self.env} points to {paths[0]}, which does not exist"
        else:
            where = "expected at " + " or ".join(str(p) for p in paths)
        needs = f" ({self.needs})" if self.needs else ""
        return (
            f"{self.name} not found ({where}). Build it with `{self.build_command}` from the repository root"
            f"{needs}, or set {self.env} to the built library."
        )


__all__ = ["BUILD_DIR", "REPO_ROOT", "NativeLibrary"]
