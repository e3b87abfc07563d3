"""Reading checkpoint files without running code from them, and telling their naming schemes apart.

Shared by every importer that reads ``.pth`` / ``.pkl`` files (:mod:`.detectron2`, :mod:`.backbones`):

* :func:`read_checkpoint_file` loads a torch zip archive with ``torch.load(weights_only=True)`` or a pickle
  with an unpickler that only rebuilds numpy arrays, dicts and lists; the file type is sniffed from the
  content, not the extension;
* :func:`extract_state_dict` finds the tensors in what was loaded (``{"model": ...}``, ``{"state_dict": ...}``
  or flat) and turns numpy arrays into tensors;
* :func:`sniff_layout` says which naming scheme a state dict uses, so a file given to the wrong
  ``--from`` gets an error naming the right one (:func:`wrong_layout_error`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .report import ConversionError


class _NumpyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers only; any other global in the file is refused."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays are read)")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("legacy torch.save file")


def read_checkpoint_file(path: str | os.PathLike[str], expected: str) -> Any:
    """Load a ``.pth`` / ``.pkl`` file without running code from it; errors name the file and the problem.

    ``expected`` is the ``--from`` flag, used to point at the right flag when ``path`` is a directory.
    """
    path = Path(path)
    if path.is_dir():
        raise ConversionError(f"{path}: is a directory; --from {expected} expects a checkpoint file. {_dir_hint(path)}")
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConversionError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    data = path.read_bytes()
    if not data:
        raise ConversionError(f"{path}: empty file")
    if data.startswith(b"PK\x03\x04"):
        raise ConversionError(f"{path}: not a readable checkpoint (truncated or damaged zip archive)")
    try:
        return _NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "legacy torch.save" not in str(exc):
            if "refusing" in str(exc):
                raise ConversionError(f"{path}: {exc}") from None
            raise ConversionError(f"{path}: not a readable checkpoint (corrupt or truncated pickle: {exc})") from None
    except Exception as exc:
        raise ConversionError(
            f"{path}: not a readable checkpoint (neither a torch zip archive nor a pickle: {type(exc).__name__}: {exc})"
        ) from None
    try:  # pre-1.6 torch.save format
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _dir_hint(path: Path) -> str:
    if (path / "config.json").is_file():
        try:
            doc = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return ""
        if isinstance(doc, dict) and doc.get("format") == "faseg-checkpoint":
            return "It is already a faseg checkpoint directory (load it with faseg.model.from_pretrained)."
        if isinstance(doc, dict) and doc.get("model_type") == "mask2former":
            return "It looks like a Hugging Face Mask2Former directory: use --from hf."
    return ""


def to_tensor(value: Any, key: str, source: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray | np.generic):
        return torch.from_numpy(np.array(value, copy=True, order="C"))  # keeps 0-d arrays 0-d
    raise ConversionError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor or array")


def extract_state_dict(obj: Any, source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict inside a loaded checkpoint object (``{"model": ...}``, ``{"state_dict": ...}`` or flat)."""
    if not isinstance(obj, dict):
        raise ConversionError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if k in ("__author__", "matching_heuristics", "iteration")}
    state = obj
    for container in ("model", "state_dict"):
        if isinstance(obj.get(container), dict):
            state = obj[container]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor | np.ndarray | np.generic)}
    if not tensors:
        raise ConversionError(f"{source}: no tensors found (expected a state dict, optionally under 'model')")
    others = sorted(k for k in state if k not in tensors)
    if state is obj:  # a flat dict: the metadata keys are not tensors; anything else non-tensor is suspicious
        others = [k for k in others if k not in meta]
    if others:
        raise ConversionError(f"{source}: non-tensor entries in the state dict: {', '.join(map(str, others[:5]))}")
    out = {str(k): to_tensor(v, k, source) for k, v in tensors.items()}
    if all(k.startswith("module.") for k in out):  # saved from a DistributedDataParallel wrapper
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out, meta


LAYOUT_FLAGS = {
    "detectron2": "--from detectron2",
    "detectron2-backbone": "--from detectron2",
    "swin": "--from swin",
    "torchvision-resnet": "--from torchvision-resnet",
    "hf": "--from hf (pass the model directory)",
    "faseg": "faseg.model.from_pretrained (it is already our format)",
}


def sniff_layout(keys: set[str] | dict[str, Any]) -> str:
    """Which naming scheme a state dict uses: one of :data:`LAYOUT_FLAGS` or ``"unknown"``."""
    keys = set(keys)
    if any(k.startswith(("model.pixel_level_module.", "model.transformer_module.")) for k in keys):
        return "hf"
    if any(k.startswith(("backbone.", "sem_seg_head.")) for k in keys):
        return "detectron2"
    if "stem.conv1.weight" in keys:
        return "detectron2-backbone"
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision-resnet"
    if "patch_embed.proj.weight" in keys and any(k.startswith("layers.") for k in keys):
        return "swin"
    return "unknown"


def wrong_layout_error(source: str, layout: str, flag: str) -> ConversionError:
    if layout == "unknown":
        return ConversionError(f"{source}: not a {flag} checkpoint: unrecognised parameter names")
    return ConversionError(
        f"{source}: not a {flag} checkpoint: its parameter names are those of a {layout} checkpoint; "
        f"use {LAYOUT_FLAGS[layout]}"
    )
