"""Where `faseg serve` finds its model when none is given.

The bundled demo checkpoint (``faseg.model.demo.demo_checkpoint_dir()``) is exported to a portable ONNX file
on first start and cached under ``Settings.cache_dir`` as ``demo-<hash>.onnx``, the hash covering the
checkpoint's weights and config, so a new demo model never reuses a stale export. The file is written to a
temporary name and renamed, so concurrent first starts cannot serve a half-written graph.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from .config import default_cache_dir

log = logging.getLogger(__name__)


class DefaultModelUnavailable(RuntimeError):
    """No model was given and the bundled demo model cannot be produced."""


def _digest(checkpoint: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(checkpoint / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def demo_onnx_name(checkpoint: Path) -> str:
    """The cached export's file name, keyed by the checkpoint's contents."""
    return f"demo-{_digest(checkpoint)}.onnx"


def resolve_default_model(cache_dir: Path | None = None) -> Path:
    """Path of the ONNX file to serve when ``--model`` is not given, exporting and caching it if needed.

    ``cache_dir`` is ``Settings.cache_dir`` (``None``: the settings' default, :func:`default_cache_dir`).
    """
    from faseg.model.demo import demo_checkpoint_dir

    checkpoint = demo_checkpoint_dir()
    if not (checkpoint / "model.safetensors").is_file() or not (checkpoint / "config.json").is_file():
        raise DefaultModelUnavailable(
            f"the bundled demo model is missing from {checkpoint}: pass --model DIR|FILE.onnx|FILE.plan or set "
            "FASEG_MODEL"
        )
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    target = cache / demo_onnx_name(checkpoint)
    if target.is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DefaultModelUnavailable(f"cannot create the cache directory {cache}: {exc}") from exc

    from faseg.export.onnx_export import ExportOptions, export_checkpoint

    log.info("exporting the bundled demo model to %s (first start)", target)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".demo-", suffix=".onnx")
    os.close(fd)
    try:
        export_checkpoint(checkpoint, tmp, ExportOptions(flavour="portable"))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
