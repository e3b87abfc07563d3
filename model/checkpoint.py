"""Our checkpoint format: a directory with ``model.safetensors`` and ``config.json``.

``config.json``::

    {
      "format": "faseg-checkpoint",
      "format_version": 1,
      "model": { ...ModelConfig fields... },       # the full config: preset values with overrides applied
      "classes": ["wall", "building", ...],         # num_classes names
      "palette": [[120, 120, 120], ...],            # one RGB triple per class
      "input_policy": {"size": [H, W], "resize": "letterbox", "pad_value": [123.675, 116.28, 103.53]},
      "metadata": {...}                             # free-form: training command, scores, source checkpoint
    }

Loading is strict: every tensor of the model must be present with the right shape and nothing else may be
in the file. A failure names the problem and never returns a half-loaded model.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .faseg import FASeg, build_model
from .inference import ServingHead

FORMAT = "faseg-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


@dataclass
class CheckpointInfo:
    """Everything in ``config.json`` besides the weights."""

    config: ModelConfig
    classes: list[str]
    palette: list[tuple[int, int, int]]
    input_size: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)


def default_classes(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """A deterministic, well-spread palette (golden-ratio hue steps)."""
    import colorsys

    palette = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3) / 2)
        palette.append((int(r * 255), int(g * 255), int(b * 255)))
    return palette


def _state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone everything to plain contiguous tensors.
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}


def save_pretrained(
    model: FASeg,
    directory: str | os.PathLike[str],
    classes: list[str] | None = None,
    palette: list[tuple[int, int, int]] | None = None,
    input_size: tuple[int, int] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory`` (created if needed; files replaced atomically)."""
    cfg = model.cfg
    classes = list(classes) if classes is not None else default_classes(cfg.num_classes)
    palette = [tuple(int(v) for v in rgb) for rgb in (palette or default_palette(cfg.num_classes))]
    if len(classes) != cfg.num_classes or len(palette) != cfg.num_classes:
        raise ValueError(
            f"model has {cfg.num_classes} classes but {len(classes)} names and "
            f"{len(palette)} palette entries were given"
        )
    size = tuple(input_size or cfg.default_input_size)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg.to_dict(),
        "classes": classes,
        "palette": [list(p) for p in palette],
        "input_policy": {"size": list(size), "resize": "letterbox", "pad_value": list(cfg.pixel_mean)},
        "metadata": metadata or {},
    }
    _atomic_write(out / WEIGHTS_NAME, lambda p: save_file(_state_dict_for_saving(model), str(p)))
    _atomic_write(out / CONFIG_NAME, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))
    return out


def _atomic_write(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be read by others (images, CI)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_checkpoint_info(directory: str | os.PathLike[str]) -> CheckpointInfo:
    """Parse and validate ``config.json`` of a checkpoint directory."""
    path = Path(directory)
    config_path = path / CONFIG_NAME
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected {CONFIG_NAME} and {WEIGHTS_NAME} inside)")
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; {path} is not a faseg checkpoint directory")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f'{config_path}: not a faseg checkpoint config (missing "format": "{FORMAT}")')
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    try:
        cfg = ModelConfig.from_dict(document["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid model config: {exc}") from None
    classes = document.get("classes") or default_classes(cfg.num_classes)
    palette = [tuple(p) for p in (document.get("palette") or default_palette(cfg.num_classes))]
    if len(classes) != cfg.num_classes:
        raise CheckpointError(
            f"{config_path}: class-count mismatch: the model has {cfg.num_classes} classes, "
            f"the class list has {len(classes)}"
        )
    if len(palette) != cfg.num_classes or any(len(p) != 3 for p in palette):
        raise CheckpointError(f'{config_path}: "palette" must hold {cfg.num_classes} RGB triples')
    size = tuple(document.get("input_policy", {}).get("size") or cfg.default_input_size)
    return CheckpointInfo(cfg, list(classes), palette, (int(size[0]), int(size[1])), document.get("metadata", {}))


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model`` or raise naming every missing, unexpected and mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the model config"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def from_pretrained(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> FASeg:
    """Load a checkpoint directory; the model is returned in eval mode with ``model.checkpoint_info`` set."""
    info = read_checkpoint_info(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    model = build_model(info.config)
    load_state_dict_strict(model, state, str(weights))
    model.checkpoint_info = info
    return model.to(device).eval()


@dataclass(frozen=True)
class ServingModule:
    """A checkpoint ready to serve: the module and what the server needs to know about it."""

    module: nn.Module  # ServingHead: uint8 (N, H, W, 3) -> labels (N, H, W), confidence (N, H, W)
    info: CheckpointInfo  # classes, palette, input_size (H, W)


def load_serving_module(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> ServingModule:
    """A checkpoint as the serving graph: :class:`faseg.model.ServingHead` (uint8 NHWC images in, labels and
    confidence out) in eval mode, with the checkpoint's :class:`CheckpointInfo` beside it."""
    model = from_pretrained(directory, device=device)
    return ServingModule(module=ServingHead(model).eval(), info=model.checkpoint_info)
