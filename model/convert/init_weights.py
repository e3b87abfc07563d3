"""Initial weights for fine-tuning (``faseg train --init SRC``) from any checkpoint `faseg convert` reads.

``SRC`` is one of:

* a faseg checkpoint directory (``config.json`` + ``model.safetensors``);
* an official detectron2 FASeg / Mask2Former checkpoint (``.pth`` / ``.pkl``), imported by
  :mod:`.detectron2` (a Mask2Former file into a FASeg model is warm-started, :mod:`.warm_start`), or a
  detectron2 ImageNet backbone file (``R-50.pkl``: the backbone is loaded, everything else starts fresh);
* a Hugging Face ``Mask2FormerForUniversalSegmentation`` directory, imported by :mod:`.hf` (warm-started into
  a FASeg model).

Every tensor but the class head must fit the model exactly (the importers' strict checks; parts a warm start
initialises on purpose are listed). The class head follows the classes by name (:func:`carry_class_head`).
The result, :class:`InitReport`, says what was loaded, what was carried and what starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from ..checkpoint import WEIGHTS_NAME, CheckpointError, read_checkpoint_info
from ..data.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES
from ..faseg import FASeg
from .detectron2 import (
    config_is_faseg,
    convert_detectron2_state_dict,
    inspect_state,
    read_detectron2,
    sniff_layout,
)
from .hf import config_from_hf, convert_hf, read_hf_config
from .report import ConversionError
from .warm_start import CLASS_HEAD, ClassHeadCarry, carry_class_head

#: Class names of the datasets whose official checkpoints name no classes, by class count.
_KNOWN_CLASS_SETS: dict[int, tuple[str, list[str]]] = {
    len(ADE20K_CLASSES): ("ADE20K", list(ADE20K_CLASSES)),
    len(CITYSCAPES_CLASSES): ("Cityscapes", list(CITYSCAPES_CLASSES)),
}


@dataclass
class InitReport:
    """What ``--init`` loaded into the model (written to ``OUT/init_report.json`` by ``faseg train``)."""

    source: str
    source_format: str  # "faseg" | "detectron2" | "hf"
    loaded: int  # tensors loaded from the source, class head and freshly initialised ones excluded
    class_head: ClassHeadCarry
    fresh: list[str] = field(default_factory=list)  # tensors a warm start initialises on purpose
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "class_head": self.class_head.to_dict()}

    def format(self) -> str:
        lines = [f"--init {self.source} ({self.source_format}): {self.loaded} tensors loaded"]
        lines.append("  " + self.class_head.summary())
        if self.fresh:
            lines.append(f"  newly initialised by the warm start: {len(self.fresh)} tensors")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def detect_format(source: str | os.PathLike[str]) -> str:
    """``faseg``, ``detectron2`` or ``hf`` for a ``--init`` source, or :class:`CheckpointError` naming the forms."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in (".pth", ".pkl"):
        return "detectron2"
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            document = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"--init {source}: {config} is not valid JSON ({exc})") from None
        if isinstance(document, dict) and document.get("model_type") == "mask2former":
            return "hf"
        return "faseg"
    raise CheckpointError(
        f"--init {source}: expected a faseg checkpoint directory (config.json + {WEIGHTS_NAME}), an official "
        "detectron2 FASeg / Mask2Former checkpoint (.pth / .pkl) or a Hugging Face Mask2Former directory"
    )


def _read_faseg(path: Path) -> tuple[dict[str, Tensor], list[str] | None, list[str], list[str]]:
    info = read_checkpoint_info(path)  # validates config.json
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    return load_file(str(weights)), list(info.classes), [], []


def _read_detectron2(path: Path, model: FASeg) -> tuple[dict[str, Tensor], list[str] | None, list[str], list[str]]:
    state, meta = read_detectron2(path)
    if sniff_layout(state) == "detectron2-backbone":  # ImageNet weights (R-50.pkl): the heads start fresh
        conversion = convert_detectron2_state_dict(state, model.cfg, source=str(path), meta=meta)
        loaded = set(conversion.report.loaded)
        body = {k: v for k, v in conversion.model.state_dict().items() if not k.startswith(CLASS_HEAD)}
        return body, None, sorted(set(body) - loaded), list(conversion.report.notes)
    facts = inspect_state(state)
    if facts.num_classes is None:
        raise ConversionError(f"{path}: no class head (sem_seg_head.predictor.class_embed); not a full checkpoint")
    source_cfg = dataclasses.replace(model.cfg, num_classes=facts.num_classes)
    warm = facts.head == "mask2former" and config_is_faseg(model.cfg)
    conversion = convert_detectron2_state_dict(state, source_cfg, source=str(path), meta=meta, warm_start=warm)
    notes = list(conversion.report.notes)
    classes = None
    if facts.num_classes in _KNOWN_CLASS_SETS:
        dataset, classes = _KNOWN_CLASS_SETS[facts.num_classes]
        notes.append(f"the checkpoint names no classes; its {facts.num_classes} classes read as {dataset}'s")
    return conversion.model.state_dict(), classes, list(conversion.report.fresh), notes


def _read_hf(path: Path, model: FASeg) -> tuple[dict[str, Tensor], list[str] | None, list[str], list[str]]:
    hf_config, preprocessor = read_hf_config(path)
    _, classes = config_from_hf(hf_config, preprocessor, str(path))
    source_cfg = dataclasses.replace(model.cfg, num_classes=len(classes))
    conversion = convert_hf(path, source_cfg, warm_start=config_is_faseg(model.cfg))
    return conversion.model.state_dict(), classes, list(conversion.report.fresh), list(conversion.report.notes)


def init_model(model: FASeg, source: str | os.PathLike[str], classes: Sequence[str]) -> InitReport:
    """Load ``source`` into ``model`` (whose classes are ``classes``); see the module doc. Raises
    :class:`CheckpointError` (or its subclass :class:`ConversionError`) naming what does not fit."""
    fmt = detect_format(source)
    path = Path(source)
    if fmt == "faseg":
        state, source_classes, fresh, notes = _read_faseg(path)
    elif fmt == "detectron2":
        state, source_classes, fresh, notes = _read_detectron2(path, model)
    else:
        state, source_classes, fresh, notes = _read_hf(path, model)

    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(CLASS_HEAD)}
    missing = sorted(k for k in own if k not in state and not k.startswith(CLASS_HEAD))
    unexpected = sorted(set(body) - set(own))
    mismatched = sorted(k for k in set(own) & set(body) if own[k].shape != body[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"--init {source}: weights do not fit the model (missing: {missing[:8]}, unexpected: {unexpected[:8]}, "
            f"shape mismatch: {mismatched[:8]}); check --preset / --set"
        )
    if CLASS_HEAD + "weight" not in state:  # backbone-only weights
        head = {k: v for k, v in own.items() if k.startswith(CLASS_HEAD)}
        carry = ClassHeadCarry("none", {}, list(classes), no_object_carried=False)
    else:
        try:
            head, carry = carry_class_head(own, state, classes, source_classes)
        except ValueError as exc:
            raise CheckpointError(f"--init {source}: {exc}") from None
    model.load_state_dict({**body, **head}, strict=True)
    return InitReport(str(source), fmt, len(set(body) - set(fresh)), carry, fresh, notes)
