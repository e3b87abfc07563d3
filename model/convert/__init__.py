"""Checkpoint importers: official detectron2 FASeg / Mask2Former, Hugging Face Mask2Former, ImageNet backbones.

Every importer builds a fresh model, maps the source tensors onto our names, checks them key by key
(:class:`ConversionReport`: missing, unexpected, shape-mismatched, newly initialised, ignored) and either
loads them all or raises :class:`ConversionError` without returning anything. ``allow_partial=True`` turns
the key-level problems into fresh initialisations, listed in the report.

>>> conv = convert("detectron2", "ade_faseg_r50.pth", get_preset("faseg_r50_ade20k"))  # doctest: +SKIP
>>> print(conv.report.format())                                                         # doctest: +SKIP
>>> save_pretrained(conv.model, "checkpoints/faseg_r50", classes=conv.classes)          # doctest: +SKIP

Formats (the ``faseg convert --from`` values):

* ``detectron2``: official ``.pth`` / ``.pkl`` (:mod:`.detectron2`); also detectron2 backbone files.
* ``hf``: a ``Mask2FormerForUniversalSegmentation`` directory with a Swin backbone (:mod:`.hf`).
* ``torchvision-resnet`` / ``swin``: ImageNet backbone weights into a preset (:mod:`.backbones`).

``warm_start=True`` (detectron2 and hf) initialises a FASeg config from Mask2Former weights (:mod:`.warm_start`).
"""

from __future__ import annotations

import os

from ..config import ModelConfig
from .backbones import convert_swin, convert_torchvision_resnet, torchvision_resnet_name
from .detectron2 import (
    convert_detectron2,
    convert_detectron2_state_dict,
    official_to_ours,
    ours_to_official,
    save_detectron2,
    to_detectron2_state_dict,
)
from .hf import config_from_hf, convert_hf, hf_state_to_ours
from .report import Conversion, ConversionError, ConversionReport, group_keys
from .warm_start import faseg_layer_for

FORMATS = ("detectron2", "hf", "torchvision-resnet", "swin")

__all__ = [
    "FORMATS",
    "Conversion",
    "ConversionError",
    "ConversionReport",
    "config_from_hf",
    "convert",
    "convert_detectron2",
    "convert_detectron2_state_dict",
    "convert_hf",
    "convert_swin",
    "convert_torchvision_resnet",
    "faseg_layer_for",
    "group_keys",
    "hf_state_to_ours",
    "official_to_ours",
    "ours_to_official",
    "save_detectron2",
    "to_detectron2_state_dict",
    "torchvision_resnet_name",
]


def convert(
    source_format: str,
    source: str | os.PathLike[str],
    cfg: ModelConfig | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    warm_start: bool = False,
    allow_partial: bool = False,
) -> Conversion:
    """Import ``source`` of ``source_format`` (one of :data:`FORMATS`) into a model of ``cfg``.

    ``cfg`` may be None for ``detectron2`` (inferred when one preset matches) and ``hf`` (derived from the
    HF config); backbone formats need it. ``overrides`` are ``key=value`` config overrides applied on top.
    """
    if source_format not in FORMATS:
        raise ConversionError(f"unknown source format {source_format!r}; expected one of {', '.join(FORMATS)}")
    if warm_start and source_format not in ("detectron2", "hf"):
        raise ConversionError("--warm-start applies to full Mask2Former checkpoints (--from detectron2 or hf)")
    kwargs = {"overrides": overrides, "allow_partial": allow_partial}
    if source_format == "detectron2":
        return convert_detectron2(source, cfg, warm_start=warm_start, **kwargs)
    if source_format == "hf":
        return convert_hf(source, cfg, warm_start=warm_start, **kwargs)
    if source_format == "torchvision-resnet":
        return convert_torchvision_resnet(source, cfg, **kwargs)
    return convert_swin(source, cfg, **kwargs)
