"""Warm-start a FASeg model from Mask2Former weights (``faseg convert ... --warm-start``).

Both models share the backbone, the deformable pixel decoder and the decoder's building blocks; FASeg adds
K_p convolutions, a res2 projection, the DFPQ projection h and a 4-level decoder schedule with HRCA. The
mapping, in our parameter names:

* **Shared, copied unchanged**: the backbone; the pixel decoder's ``input_proj.{0,1,2}`` (res5, res4, res3),
  deformable encoder (incl. ``transformer.level_embed``, 3 levels in both), ``adapter_1`` / ``layer_1`` /
  ``mask_features``; the decoder's ``query_feat``, ``pos_queries.query_embed`` (FASeg's bias B, added before
  h and used as the static query PE of HRCA layers), ``decoder_norm``, ``class_embed``, ``mask_embed``.
* **Decoder layers by level, not by index.** Mask2Former runs rounds of 3 masked layers at
  (1/32, 1/16, 1/8): layer j is level j mod 3 of round j // 3. FASeg runs rounds of 4 — the same 3 masked
  levels, then an HRCA layer on the 1/4 map: layer i is slot i mod 4 of round i // 4. Mask2Former layer j
  therefore becomes FASeg layer 4·(j // 3) + (j mod 3), so every copied layer keeps attending to the level it
  was trained on (9 → 13 layers: 0,1,2→0,1,2; 3,4,5→4,5,6; 6,7,8→8,9,10). Self-attention, cross-attention and
  FFN of a layer move together. FASeg layers with no Mask2Former counterpart — the HRCA layers (3, 7, 11)
  and the final 1/32 layer (12) — are newly initialised. (An index-wise copy would make layer 3, trained on
  the 1/32 map, run as an HRCA layer on 1/4 windows, and shift every later layer onto the wrong level.)
* **Decoder level_embed** [3, C] → [4, C]: rows 0–2 (1/32, 1/16, 1/8) copied, row 3 (1/4, HRCA memory) new.
* **Newly initialised, FASeg's own**: ``pixel_decoder.pos_linear.*`` (conditional K_p), ``input_proj.3``
  (res2 projection for the 1/4 K_p), ``pos_queries.adapt_pos2d.*`` (h) — and whatever else the target
  variant adds (e.g. ``pos_embed`` for learnable K_p).

Mask2Former's sine K_p has no parameters, so nothing maps onto ``pos_linear``: the copied deformable encoder
and decoder layers see a different key PE until fine-tuning adapts them. Fine-tune after a warm start.

**Class head across class sets** (:func:`carry_class_head`, used by ``faseg train --init``): the class head
``class_embed`` has one row per class plus the no-object row last. When the fine-tuning classes differ from
the checkpoint's, a class whose name the checkpoint also has keeps the checkpoint's row (names compared
case-insensitively; an ADE20K-style ``"building, edifice"`` matches any of its comma-separated names), the
no-object row is always carried, and the other classes keep their fresh initialisation. What was carried is
returned as a :class:`ClassHeadCarry` for the run's log and report.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .report import ConversionReport, load_converted

PRED = "sem_seg_head.predictor."
_LAYER = re.compile(rf"^{re.escape(PRED)}(transformer_(?:self_attention|cross_attention|ffn)_layers)\.(\d+)\.(.+)$")
_LEVEL_EMBED = PRED + "level_embed.weight"
# Parameters only a FASeg-style model has: fresh by design after a warm start.
_FASEG_ONLY = (
    "sem_seg_head.pixel_decoder.pos_linear.",
    "sem_seg_head.pixel_decoder.input_proj.3.",
    "sem_seg_head.pixel_decoder.pos_embed.",
    PRED + "pos_queries.adapt_pos2d.",
    PRED + "pos_queries.query_anchor.",
    PRED + "pos_queries.anchor_refine.",
)

LOW_LEVELS = 3  # Mask2Former's (and FASeg's masked) levels per round: 1/32, 1/16, 1/8
FASEG_CYCLE = 4  # FASeg's layers per round: the three levels + HRCA


def faseg_layer_for(m2f_layer: int) -> int:
    """Mask2Former decoder layer j -> the FASeg layer at the same level of the same round."""
    return FASEG_CYCLE * (m2f_layer // LOW_LEVELS) + m2f_layer % LOW_LEVELS


def mask2former_to_faseg(
    mapped: dict[str, Tensor], names: dict[str, str], model: nn.Module, report: ConversionReport
) -> tuple[dict[str, Tensor], dict[str, str], Callable[[str], bool], dict[str, Callable[[Tensor], Tensor]]]:
    """Re-key a Mask2Former state dict (our names) for a FASeg ``model``.

    Returns the re-keyed tensors, their source names, the predicate for tensors that are fresh by design and
    the partly loaded tensors (``level_embed``); notes go into ``report``.
    """
    own = model.state_dict()
    target_layers = model.sem_seg_head.predictor.num_layers
    out: dict[str, Tensor] = {}
    out_names: dict[str, str] = {}
    moved: dict[int, int] = {}
    for key, tensor in mapped.items():
        match = _LAYER.match(key)
        if match:
            group, j, rest = match.group(1), int(match.group(2)), match.group(3)
            i = faseg_layer_for(j)
            moved[j] = i
            new_key = f"{PRED}{group}.{i}.{rest}"
        elif key == _LEVEL_EMBED:
            continue  # handled as a partial load below
        else:
            new_key = key
        out[new_key] = tensor
        out_names[new_key] = names.get(key, key)

    mapped_layers = {i for i in moved.values() if i < target_layers}
    fresh_layers = sorted(set(range(target_layers)) - mapped_layers)
    if moved:
        pairs = ", ".join(f"{j}→{i}" for j, i in sorted(moved.items()) if i < target_layers)
        report.notes.append(
            f"decoder layers mapped by level (Mask2Former→FASeg): {pairs}; newly initialised: "
            f"{', '.join(map(str, fresh_layers)) or 'none'}"
        )
    dropped = sorted(j for j, i in moved.items() if i >= target_layers)
    if dropped:
        report.notes.append(f"Mask2Former layers {dropped} have no slot in the {target_layers}-layer FASeg decoder")

    partial: dict[str, Callable[[Tensor], Tensor]] = {}
    src_levels = mapped.get(_LEVEL_EMBED)
    if src_levels is not None:
        own_levels = own[_LEVEL_EMBED]
        rows = src_levels.shape[0]
        if src_levels.dim() == 2 and src_levels.shape[1] == own_levels.shape[1] and rows < own_levels.shape[0]:

            def fill(fresh: Tensor, src: Tensor = src_levels, rows: int = rows) -> Tensor:
                merged = fresh.clone()
                merged[:rows] = src
                return merged

            partial[_LEVEL_EMBED] = fill
            new_rows = f"row {rows}" if own_levels.shape[0] == rows + 1 else f"rows {rows}-{own_levels.shape[0] - 1}"
            report.partial[_LEVEL_EMBED] = (
                f"rows 0-{rows - 1} (1/32, 1/16, 1/8) from Mask2Former; {new_rows} (1/4, the HRCA memory) newly "
                "initialised"
            )
        else:
            out[_LEVEL_EMBED] = src_levels  # same size or incompatible: the generic shape check reports it
            out_names[_LEVEL_EMBED] = names.get(_LEVEL_EMBED, _LEVEL_EMBED)

    fresh_prefixes = tuple(
        f"{PRED}{group}.{i}."
        for i in fresh_layers
        for group in (
            "transformer_self_attention_layers",
            "transformer_cross_attention_layers",
            "transformer_ffn_layers",
        )
    )

    def expected_fresh(key: str) -> bool:
        return key.startswith(_FASEG_ONLY) or key.startswith(fresh_prefixes)

    return out, out_names, expected_fresh, partial


def load_full_model(
    model: nn.Module,
    mapped: dict[str, Tensor],
    names: dict[str, str],
    report: ConversionReport,
    *,
    warm_start: bool,
    allow_partial: bool,
) -> None:
    """Load converted full-model tensors into ``model``: re-keyed first for a FASeg model when ``warm_start``
    (Mask2Former weights), then the strict :func:`load_converted` (detectron2 and HF importers alike)."""
    expected_fresh = partial = None
    if warm_start:
        mapped, names, expected_fresh, partial = mask2former_to_faseg(mapped, names, model, report)
    load_converted(
        model,
        mapped,
        report,
        expected_fresh=expected_fresh,
        partial=partial,
        allow_partial=allow_partial,
        source_names=names,
    )


# ----------------------------------------------------------------------------------------------- class head

CLASS_HEAD = PRED + "class_embed."


def _normalise(name: str) -> str:
    return " ".join(name.lower().split())


def _alternatives(name: str) -> list[str]:
    """The comma-separated names of an ADE20K-style class (``"building, edifice"``)."""
    return [part.strip() for part in _normalise(name).split(",") if part.strip()]


@dataclass
class ClassHeadCarry:
    """What :func:`carry_class_head` did with the class head (for logs, ``init_report.json`` and metadata).

    ``mode``: ``"all"`` (the same classes: the head loaded whole), ``"by_name"`` (rows of shared class names
    carried), ``"by_index"`` (the same count, the source's names unknown) or ``"none"`` (nothing shared).
    ``carried`` maps a target class to the source class its row came from; ``initialised`` lists the target
    classes that keep their fresh rows.
    """

    mode: str
    carried: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    no_object_carried: bool = True
    source_num_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.source_num_classes == 0:
            return f"class head: none in the checkpoint; all {len(self.initialised)} classes and no-object start fresh"
        if self.mode == "all":
            return f"class head: all {len(self.carried)} classes and no-object carried (same classes)"
        if self.mode == "by_index":
            return (
                f"class head: the checkpoint's class names are unknown; its {self.source_num_classes} rows carried "
                "by index"
            )
        shared = ", ".join(f"{t}<-{s}" if t != s else t for t, s in self.carried.items()) or "none"
        fresh = ", ".join(self.initialised) or "none"
        return (
            f"class head: {len(self.carried)} of {len(self.carried) + len(self.initialised)} classes carried over by "
            f"name from the checkpoint's {self.source_num_classes} ({shared}); newly initialised: {fresh}; "
            f"no-object row {'carried' if self.no_object_carried else 'newly initialised'}"
        )


def match_classes(target: Sequence[str], source: Sequence[str]) -> dict[int, int]:
    """Target class index -> source class index for the classes whose names match: a whole name first, then
    any comma-separated alternative; each source class is used once (the first target to match takes it)."""
    whole: dict[str, int] = {}
    alternative: dict[str, int] = {}
    for j, name in enumerate(source):
        whole.setdefault(_normalise(name), j)
        for alt in _alternatives(name):
            alternative.setdefault(alt, j)
    matches: dict[int, int] = {}
    for i, name in enumerate(target):
        candidates = [whole.get(_normalise(name)), *(alternative.get(alt) for alt in _alternatives(name))]
        j = next((c for c in candidates if c is not None and c not in matches.values()), None)
        if j is not None:
            matches[i] = j
    return matches


def carry_class_head(
    fresh: dict[str, Tensor],
    source: dict[str, Tensor],
    target_classes: Sequence[str],
    source_classes: Sequence[str] | None,
) -> tuple[dict[str, Tensor], ClassHeadCarry]:
    """The class-head tensors (``class_embed.weight`` / ``.bias``, K+1 rows) for the target classes.

    ``fresh``: the model's own, freshly initialised tensors; ``source``: the checkpoint's (our names).
    ``source_classes`` None means the checkpoint does not name its classes: its rows then carry over by index
    when the counts agree, else only the no-object row does. Raises ``ValueError`` when the class heads
    differ in anything but their row count.
    """
    keys = sorted(k for k in fresh if k.startswith(CLASS_HEAD))
    src_rows = int(source[CLASS_HEAD + "weight"].shape[0]) - 1
    for key in keys:
        if key not in source:
            raise ValueError(f"the checkpoint has no {key}")
        if tuple(source[key].shape[1:]) != tuple(fresh[key].shape[1:]):
            raise ValueError(
                f"{key}: checkpoint {tuple(source[key].shape)} vs model {tuple(fresh[key].shape)}: the class heads "
                "differ in width, not only in their classes"
            )
    target = list(target_classes)
    if source_classes is not None and len(source_classes) != src_rows:
        source_classes = None  # names that do not fit the head are no names
    if source_classes is not None and [c.lower() for c in source_classes] == [c.lower() for c in target]:
        carry = ClassHeadCarry("all", {c: c for c in target}, [], True, src_rows)
        return {k: source[k].clone() for k in keys}, carry
    if source_classes is None:
        if src_rows == len(target):
            return {k: source[k].clone() for k in keys}, ClassHeadCarry("by_index", {}, [], True, src_rows)
        matches: dict[int, int] = {}
    else:
        matches = match_classes(target, source_classes)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for key in keys:
            merged = fresh[key].clone()
            for i, j in matches.items():
                merged[i] = source[key][j]
            merged[-1] = source[key][-1]  # the no-object row
            out[key] = merged
    names = list(source_classes) if source_classes is not None else []
    carry = ClassHeadCarry(
        "by_name" if matches else "none",
        {target[i]: names[j] for i, j in sorted(matches.items())},
        [c for i, c in enumerate(target) if i not in matches],
        True,
        src_rows,
    )
    return out, carry
