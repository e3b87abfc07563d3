"""Official FASeg / Mask2Former (detectron2) checkpoints <-> our model.

Container formats (spec §5.2):

* ``.pth``: ``torch.save`` of a dict whose ``"model"`` entry is the state dict (detectron2's Checkpointer;
  ``optimizer`` / ``scheduler`` / ``iteration`` may sit next to it and are ignored). Read with
  ``torch.load(weights_only=True)``: no code in the file runs.
* ``.pkl``: a pickle of ``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}``
  (the Mask2Former model zoo and detectron2's ImageNet backbones). Read with an unpickler that only
  rebuilds numpy arrays, dicts and lists.

The file type is sniffed from its content, not its extension (:mod:`.files` reads both).

Names (spec §5.2). Ours equal the official ones except the positional-query parameters, which live one
module deeper::

    official                                          ours
    sem_seg_head.predictor.query_embed.weight         sem_seg_head.predictor.pos_queries.query_embed.weight
    sem_seg_head.predictor.adapt_pos2d.{0,2}.*        sem_seg_head.predictor.pos_queries.adapt_pos2d.{0,2}.*

On import, and only there: ``sem_seg_head.predictor.static_query.weight`` (old checkpoints) is read as
``query_feat.weight``; ``criterion.empty_weight`` (a loss buffer), ``pixel_mean`` / ``pixel_std`` (old
detectron2 saved them) and ``num_batches_tracked`` counters that the model has no place for (FrozenBN) are
dropped and reported as ignored.

A backbone-only detectron2 file (``stem.*`` / ``res2.*`` ..., e.g. ``ImageNetPretrained/torchvision/R-50.pkl``)
loads into the backbone; the head is reported as newly initialised.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..backbone.resnet import _BLOCKS_PER_STAGE
from ..config import ModelConfig, apply_overrides
from ..faseg import FASeg, build_model
from ..presets import get_preset, preset_names
from .backbones import convert_backbone_state_dict
from .files import extract_state_dict, read_checkpoint_file, sniff_layout, wrong_layout_error
from .report import Conversion, ConversionError, ConversionReport
from .warm_start import load_full_model

PREDICTOR = "sem_seg_head.predictor."
PIXEL_DECODER = "sem_seg_head.pixel_decoder."
_POS_QUERY_PARAMS = ("query_embed.", "adapt_pos2d.")
_OURS_POS_QUERIES = PREDICTOR + "pos_queries."


# ----------------------------------------------------------------------------------------------- names


def official_to_ours(name: str) -> str:
    """Official detectron2 parameter name -> ours (a bijection; see the module docstring)."""
    if name.startswith(PREDICTOR) and name[len(PREDICTOR) :].startswith(_POS_QUERY_PARAMS):
        return _OURS_POS_QUERIES + name[len(PREDICTOR) :]
    return name


def ours_to_official(name: str) -> str:
    """Our parameter name -> the official one (inverse of :func:`official_to_ours`)."""
    if name.startswith(_OURS_POS_QUERIES) and name[len(_OURS_POS_QUERIES) :].startswith(_POS_QUERY_PARAMS):
        return PREDICTOR + name[len(_OURS_POS_QUERIES) :]
    return name


def to_detectron2_state_dict(
    model: FASeg, include_criterion: bool = True, no_object_weight: float = 0.1
) -> dict[str, Tensor]:
    """Our model's tensors under the official names, plus ``criterion.empty_weight`` like a training checkpoint."""
    state = {ours_to_official(k): v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if include_criterion:
        weight = torch.ones(model.cfg.num_classes + 1)
        weight[-1] = no_object_weight
        state["criterion.empty_weight"] = weight
    return state


def save_detectron2(model: FASeg, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write an official-layout checkpoint: ``.pth`` (``torch.save({"model": ...})``) or ``.pkl`` (numpy pickle)."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    state = to_detectron2_state_dict(model)
    if fmt == "pth":
        torch.save({"model": state, "iteration": 0}, path)
    elif fmt == "pkl":
        with path.open("wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "faseg"}, f)
    else:
        raise ValueError(f"unknown detectron2 checkpoint format {fmt!r}; expected 'pth' or 'pkl'")
    return path


# ----------------------------------------------------------------------------------------------- architecture


@dataclass
class ArchFacts:
    """What a detectron2-layout state dict (official names) says about the model that wrote it."""

    backbone: str | None = None  # "resnet" | "swin"
    resnet_blocks: tuple[int, ...] = ()
    resnet_bottleneck: bool = False
    resnet_has_bn_counters: bool = False
    swin_embed_dim: int | None = None
    swin_depths: tuple[int, ...] = ()
    head: str | None = None  # "faseg" | "mask2former"
    num_classes: int | None = None
    num_queries: int | None = None
    hidden_dim: int | None = None
    dec_layers: int | None = None

    def describe(self) -> str:
        if self.backbone == "resnet":
            depth = next((d for d, b in _BLOCKS_PER_STAGE.items() if b == self.resnet_blocks), None)
            bb = f"ResNet-{depth}" if depth else f"ResNet with blocks {list(self.resnet_blocks)}"
        elif self.backbone == "swin":
            bb = f"Swin (embed_dim {self.swin_embed_dim}, depths {list(self.swin_depths)})"
        else:
            bb = "no backbone"
        head = {"faseg": "FASeg", "mask2former": "Mask2Former"}.get(self.head or "", "no head")
        extra = []
        if self.dec_layers is not None:
            extra.append(f"{self.dec_layers} decoder layers")
        if self.num_queries is not None:
            extra.append(f"{self.num_queries} queries")
        if self.num_classes is not None:
            extra.append(f"{self.num_classes} classes")
        return f"{head} / {bb}" + (f" ({', '.join(extra)})" if extra else "")


def _count(keys: set[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def inspect_state(state: dict[str, Tensor]) -> ArchFacts:
    """Read the architecture off the official names and shapes of a full detectron2 state dict."""
    keys = set(state)
    facts = ArchFacts()
    if "backbone.stem.conv1.weight" in keys:
        facts.backbone = "resnet"
        facts.resnet_blocks = tuple(_count(keys, rf"backbone\.res{s}\.(\d+)\.conv1\.weight$") for s in range(2, 6))
        facts.resnet_bottleneck = any(k.startswith("backbone.res2.0.conv3.") for k in keys)
        facts.resnet_has_bn_counters = any(k.endswith("num_batches_tracked") for k in keys)
    elif "backbone.patch_embed.proj.weight" in keys:
        facts.backbone = "swin"
        facts.swin_embed_dim = int(state["backbone.patch_embed.proj.weight"].shape[0])
        facts.swin_depths = tuple(_count(keys, rf"backbone\.layers\.{s}\.blocks\.(\d+)\.") for s in range(4))
    pred = {k[len(PREDICTOR) :] for k in keys if k.startswith(PREDICTOR)}
    if pred:
        level_rows = state.get(PREDICTOR + "level_embed.weight")
        is_faseg = (
            any(k.startswith("adapt_pos2d.") for k in pred)
            or any(k.startswith(PIXEL_DECODER + "pos_linear.") for k in keys)
            or (level_rows is not None and level_rows.shape[0] == 4)
        )
        facts.head = "faseg" if is_faseg else "mask2former"
        if PREDICTOR + "class_embed.weight" in state:
            facts.num_classes = int(state[PREDICTOR + "class_embed.weight"].shape[0]) - 1
        for name in ("query_feat.weight", "static_query.weight"):
            if PREDICTOR + name in state:
                facts.num_queries, facts.hidden_dim = (int(s) for s in state[PREDICTOR + name].shape)
                break
        facts.dec_layers = _count(keys, rf"{re.escape(PREDICTOR)}transformer_ffn_layers\.(\d+)\.")
    return facts


def config_is_faseg(cfg: ModelConfig) -> bool:
    return cfg.decoder.hrca != "off" or cfg.decoder.positional_queries != "learnable"


def _backbone_problem(facts: ArchFacts, cfg: ModelConfig) -> str | None:
    bb = cfg.backbone
    if facts.backbone is None:
        return None
    if facts.backbone != bb.type:
        return f"the checkpoint has a {facts.backbone} backbone, the config a {bb.type} backbone"
    if bb.type == "resnet":
        want = _BLOCKS_PER_STAGE.get(bb.resnet.depth)
        bottleneck = bb.resnet.depth >= 50
        if facts.resnet_blocks != want or facts.resnet_bottleneck != bottleneck:
            return (
                f"the checkpoint's ResNet has blocks {list(facts.resnet_blocks)} "
                f"({'bottleneck' if facts.resnet_bottleneck else 'basic'}), the config is ResNet-{bb.resnet.depth}"
            )
    elif facts.swin_embed_dim != bb.swin.embed_dim or facts.swin_depths != tuple(bb.swin.depths):
        return (
            f"the checkpoint's Swin has embed_dim {facts.swin_embed_dim}, depths {list(facts.swin_depths)}; "
            f"the config has embed_dim {bb.swin.embed_dim}, depths {list(bb.swin.depths)}"
        )
    return None


def check_architecture(
    facts: ArchFacts, cfg: ModelConfig, source: str, *, warm_start: bool, allow_partial: bool
) -> list[str]:
    """Raise on a checkpoint of another architecture; return notes on smaller differences.

    Backbone and head type mismatches always fail (a partial load of another architecture is meaningless).
    A class-count mismatch fails unless ``allow_partial`` (then the class head stays fresh: fine-tuning on
    new classes).
    """
    target = f"config {cfg.name!r}"
    problem = _backbone_problem(facts, cfg)
    if problem:
        raise ConversionError(f"{source}: checkpoint of another architecture: {problem} ({target})")
    notes: list[str] = []
    if facts.head is not None:
        tgt_faseg = config_is_faseg(cfg)
        src_faseg = facts.head == "faseg"
        if warm_start:
            if src_faseg:
                raise ConversionError(
                    f"{source}: --warm-start initialises FASeg from *Mask2Former* weights, but this checkpoint "
                    "is already FASeg; drop --warm-start"
                )
            if not tgt_faseg:
                raise ConversionError(
                    f"{source}: --warm-start needs a FASeg target config; {target} is Mask2Former; drop --warm-start"
                )
        elif src_faseg != tgt_faseg:
            tgt_name = "Mask2Former" if src_faseg else "FASeg"
            hint = " (pass --warm-start to initialise FASeg from Mask2Former weights)" if not src_faseg else ""
            raise ConversionError(
                f"{source}: checkpoint of another architecture: it is {facts.describe()}, {target} is {tgt_name}{hint}"
            )
    if facts.num_classes is not None and facts.num_classes != cfg.num_classes:
        message = (
            f"class-count mismatch: the checkpoint has {facts.num_classes} classes (class_embed has "
            f"{facts.num_classes + 1} rows incl. no-object), {target} has {cfg.num_classes}"
        )
        if not allow_partial:
            raise ConversionError(
                f"{source}: {message}; pass --set num_classes={facts.num_classes} to keep the checkpoint's classes, "
                "or --allow-partial to start a fresh class head"
            )
        notes.append(message + "; the class head stays freshly initialised")
    for what, got, want in (
        ("queries", facts.num_queries, cfg.decoder.num_queries),
        ("hidden size", facts.hidden_dim, cfg.decoder.hidden_dim),
    ):
        if got is not None and got != want:
            notes.append(f"{what}: checkpoint {got}, config {want}")
    if facts.dec_layers and not warm_start and facts.dec_layers != cfg.decoder.dec_layers:
        notes.append(f"decoder layers: checkpoint {facts.dec_layers}, config {cfg.decoder.dec_layers}")
    return notes


def infer_preset(facts: ArchFacts, source: str) -> ModelConfig:
    """The one preset whose backbone, head type and class count match the checkpoint, or an error."""
    matches, near = [], []
    for name in preset_names():
        cfg = get_preset(name)
        if _backbone_problem(facts, cfg) or (facts.head == "faseg") != config_is_faseg(cfg):
            continue
        if facts.backbone == "resnet" and facts.resnet_has_bn_counters != (cfg.backbone.resnet.norm != "FrozenBN"):
            near.append(name)
            continue
        (matches if facts.num_classes in (None, cfg.num_classes) else near).append(name)
    if len(matches) == 1:
        return get_preset(matches[0])
    hint = f"; closest presets: {', '.join(near or matches)} (adjust with --set)" if near or matches else ""
    raise ConversionError(
        f"{source}: cannot infer the config; the checkpoint is {facts.describe()}. Pass --preset{hint}"
    )


# ----------------------------------------------------------------------------------------------- conversion


def read_detectron2(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    return extract_state_dict(read_checkpoint_file(path, "detectron2"), str(path))


def convert_detectron2(
    path: str | os.PathLike[str],
    cfg: ModelConfig | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    warm_start: bool = False,
    allow_partial: bool = False,
) -> Conversion:
    """Import an official FASeg / Mask2Former checkpoint (``.pth`` or ``.pkl``).

    ``cfg`` is the target config (a preset); without it the preset is inferred from the checkpoint when
    exactly one matches. ``warm_start`` initialises a FASeg config from a Mask2Former checkpoint
    (:mod:`.warm_start`).
    """
    state, meta = read_detectron2(path)
    return convert_detectron2_state_dict(
        state, cfg, source=str(path), meta=meta, overrides=overrides, warm_start=warm_start, allow_partial=allow_partial
    )


def convert_detectron2_state_dict(
    state: dict[str, Tensor],
    cfg: ModelConfig | None = None,
    *,
    source: str = "<state dict>",
    meta: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    warm_start: bool = False,
    allow_partial: bool = False,
) -> Conversion:
    """:func:`convert_detectron2` on an already loaded state dict (official names)."""
    layout = sniff_layout(state)
    if layout == "detectron2-backbone":
        return convert_backbone_state_dict(
            {f"backbone.{k}": v for k, v in state.items()},
            cfg,
            source=source,
            source_format="detectron2",
            overrides=overrides,
            allow_partial=allow_partial,
        )
    if layout != "detectron2":
        raise wrong_layout_error(source, layout, "detectron2")
    state = dict(state)
    notes: list[str] = []
    if meta and meta.get("matching_heuristics"):
        notes.append("the file asks for detectron2's name-matching heuristics; names were matched exactly instead")
    if PREDICTOR + "static_query.weight" in state:
        state[PREDICTOR + "query_feat.weight"] = state.pop(PREDICTOR + "static_query.weight")
        notes.append("old name sem_seg_head.predictor.static_query.weight read as query_feat.weight")

    facts = inspect_state(state)
    if facts.backbone is None or facts.head is None:
        raise ConversionError(
            f"{source}: not a complete FASeg / Mask2Former checkpoint: "
            f"{'no backbone.* tensors' if facts.backbone is None else 'no sem_seg_head.predictor.* tensors'}"
        )
    if cfg is None:
        cfg = infer_preset(facts, source)
        notes.append(f"config inferred from the checkpoint: preset {cfg.name}")
    cfg = apply_overrides(cfg, list(overrides))
    notes += check_architecture(facts, cfg, source, warm_start=warm_start, allow_partial=allow_partial)

    model = build_model(cfg)
    own = model.state_dict()
    report = ConversionReport(source, "detectron2", cfg.name, notes=notes)
    mapped: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for key, tensor in state.items():
        ours = official_to_ours(key)
        reason = _ignore_reason(key, ours, own, cfg)
        if reason:
            report.ignored[key] = reason
            continue
        mapped[ours] = tensor
        names[ours] = key

    load_full_model(model, mapped, names, report, warm_start=warm_start, allow_partial=allow_partial)
    return Conversion(model.eval(), report)


def _ignore_reason(official: str, ours: str, own: dict[str, Tensor], cfg: ModelConfig) -> str | None:
    if official == "criterion.empty_weight":
        return "loss buffer (no-object class weight), not a model tensor"
    if official in ("pixel_mean", "pixel_std"):
        return "input normalisation: taken from the config, not from checkpoints"
    if official.endswith(".num_batches_tracked") and ours not in own:
        return "BatchNorm batch counter; the model's FrozenBN has none"
    if official.endswith(".attn_mask") and official.startswith("backbone."):
        return "Swin shift mask: recomputed for every input size"
    return None
