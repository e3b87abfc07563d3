"""Where `faseg serve` finds its model when none is given (DESIGN §6, "embedded default").

The bundled demo model is exported to ONNX and cached under ``Settings.cache_dir`` on first start. That
export lives with the demo-model work; until it lands this hook says so plainly instead of guessing.
"""

from __future__ import annotations

from pathlib import Path


class DefaultModelUnavailable(RuntimeError):
    """No model was given and the bundled demo model cannot be produced."""


def resolve_default_model(cache_dir: Path | None = None) -> Path:
    """Path of the ONNX file to serve when ``--model`` is not given, exporting and caching it if needed.

    ``cache_dir`` is ``Settings.cache_dir`` (``None``: the default cache directory).
    """
    raise DefaultModelUnavailable(
        "no bundled demo model yet: pass --model DIR|FILE.onnx|FILE.plan or set FASEG_MODEL "
        "(the demo model will be exported into the cache directory on first start once it exists)"
    )
