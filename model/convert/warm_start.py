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
"""

from __future__ import annotations

import re
from collections.abc import Callable

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
