"""Hugging Face ``Mask2FormerForUniversalSegmentation`` (Swin backbone) -> our model (spec §6).

Reads a model directory (``config.json`` plus ``model.safetensors``, ``pytorch_model.bin`` or their sharded
``*.index.json`` forms; ``preprocessor_config.json`` when present). No ``transformers`` import is needed.

**Config.** Derived from HF's ``config.json`` (:mod:`.hf_config`): a Mask2Former configuration of our model.

**Names** (HF → ours). HF renamed its Swin modules between v4 and v5 and saves the v4 names; both are read:

    model.pixel_level_module.encoder.[swin.]
      embeddings.patch_embeddings.projection          backbone.patch_embed.proj
      embeddings.norm                                 backbone.patch_embed.norm
      encoder.layers.s.blocks.b.layernorm_before      backbone.layers.s.blocks.b.norm1
      ...attention.self.{query,key,value}  (v4)       backbone...attn.qkv  (rows concatenated q; k; v)
      ...attention.{q,k,v}_proj            (v5)
      ...attention.self.relative_position_bias_table  backbone...attn.relative_position_bias_table
      ...attention.relative_position_bias.relative_position_bias_table (v5)
      ...attention.output.dense | attention.o_proj    backbone...attn.proj
      ...layernorm_after                              backbone...norm2
      ...intermediate.dense | mlp.fc1                 backbone...mlp.fc1
      ...output.dense | mlp.fc2                       backbone...mlp.fc2
      encoder.layers.s.downsample.{reduction,norm}    backbone.layers.s.downsample.*
      hidden_states_norms.stage{i}                    backbone.norm{i-1}
      swin.layernorm / layernorm                      ignored (classification norm, unused by the backbone)
    model.pixel_level_module.decoder.
      input_projections.{i}.{0,1}                     sem_seg_head.pixel_decoder.input_proj.{i}.{0,1}
      level_embed                                     ....transformer.level_embed
      encoder.layers.n.self_attn.*                    ....transformer.encoder.layers.n.self_attn.*
      encoder.layers.n.{fc1,fc2}                      ....transformer.encoder.layers.n.{linear1,linear2}
      encoder.layers.n.{self_attn_layer_norm,final_layer_norm}   ....{norm1,norm2}
      adapter_1.{0,1} / layer_1.{0,1}                 ....adapter_1{,.norm} / layer_1{,.norm}
      mask_projection                                 ....mask_features
    model.transformer_module.
      queries_embedder / queries_features             sem_seg_head.predictor.pos_queries.query_embed / query_feat
      level_embed                                     sem_seg_head.predictor.level_embed
      decoder.layernorm                               ....decoder_norm
      decoder.mask_predictor.mask_embedder.{i}.0      ....mask_embed.layers.{i}
      decoder.layers.i.self_attn.{q,k,v}_proj         ....transformer_self_attention_layers.i.self_attn.in_proj_*
      decoder.layers.i.self_attn.out_proj             ....transformer_self_attention_layers.i.self_attn.out_proj
      decoder.layers.i.self_attn_layer_norm           ....transformer_self_attention_layers.i.norm
      decoder.layers.i.cross_attn.*                   ....transformer_cross_attention_layers.i.multihead_attn.*
      decoder.layers.i.cross_attn_layer_norm          ....transformer_cross_attention_layers.i.norm
      decoder.layers.i.{fc1,fc2,final_layer_norm}     ....transformer_ffn_layers.i.{linear1,linear2,norm}
    class_predictor                                   sem_seg_head.predictor.class_embed
    criterion.empty_weight                            ignored (loss buffer)

Swin's ``relative_position_index`` is not saved by HF; it is a constant of the window size and is derived.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from ..config import ModelConfig, apply_overrides
from ..faseg import build_model
from .detectron2 import check_architecture, inspect_state, ours_to_official
from .files import sniff_layout
from .hf_config import config_from_hf, faseg_config_from_mask2former
from .report import Conversion, ConversionError, ConversionReport
from .warm_start import load_full_model

BACKBONE = "model.pixel_level_module.encoder."
PIXEL = "model.pixel_level_module.decoder."
TRANSFORMER = "model.transformer_module."
PD = "sem_seg_head.pixel_decoder."
PRED = "sem_seg_head.predictor."

_SWIN_BLOCK_PARTS = [
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),
    ("attention.output.dense.", "attn.proj."),
    ("attention.o_proj.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
]
_QKV_V4 = {"query": 0, "key": 1, "value": 2}
_QKV_V5 = {"q_proj": 0, "k_proj": 1, "v_proj": 2}

_PIXEL_RULES = [
    (re.compile(r"^input_projections\.(\d+)\.([01])\.(.+)$"), r"input_proj.\1.\2.\3"),
    (re.compile(r"^level_embed$"), "transformer.level_embed"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(.+)$"), r"transformer.encoder.layers.\1.self_attn.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc1\.(.+)$"), r"transformer.encoder.layers.\1.linear1.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc2\.(.+)$"), r"transformer.encoder.layers.\1.linear2.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)$"), r"transformer.encoder.layers.\1.norm1.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.final_layer_norm\.(.+)$"), r"transformer.encoder.layers.\1.norm2.\2"),
    (re.compile(r"^(adapter|layer)_(\d+)\.0\.(.+)$"), r"\1_\2.\3"),
    (re.compile(r"^(adapter|layer)_(\d+)\.1\.(.+)$"), r"\1_\2.norm.\3"),
    (re.compile(r"^mask_projection\.(.+)$"), r"mask_features.\1"),
]
_TRANSFORMER_RULES = [
    (re.compile(r"^queries_embedder\.(.+)$"), r"pos_queries.query_embed.\1"),
    (re.compile(r"^queries_features\.(.+)$"), r"query_feat.\1"),
    (re.compile(r"^level_embed\.(.+)$"), r"level_embed.\1"),
    (re.compile(r"^decoder\.layernorm\.(.+)$"), r"decoder_norm.\1"),
    (re.compile(r"^decoder\.mask_predictor\.mask_embedder\.(\d+)\.0\.(.+)$"), r"mask_embed.layers.\1.\2"),
    (
        re.compile(r"^decoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)$"),
        r"transformer_self_attention_layers.\1.self_attn.out_proj.\2",
    ),
    (
        re.compile(r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)$"),
        r"transformer_self_attention_layers.\1.norm.\2",
    ),
    (
        re.compile(r"^decoder\.layers\.(\d+)\.cross_attn\.(.+)$"),
        r"transformer_cross_attention_layers.\1.multihead_attn.\2",
    ),
    (
        re.compile(r"^decoder\.layers\.(\d+)\.cross_attn_layer_norm\.(.+)$"),
        r"transformer_cross_attention_layers.\1.norm.\2",
    ),
    (re.compile(r"^decoder\.layers\.(\d+)\.fc1\.(.+)$"), r"transformer_ffn_layers.\1.linear1.\2"),
    (re.compile(r"^decoder\.layers\.(\d+)\.fc2\.(.+)$"), r"transformer_ffn_layers.\1.linear2.\2"),
    (re.compile(r"^decoder\.layers\.(\d+)\.final_layer_norm\.(.+)$"), r"transformer_ffn_layers.\1.norm.\2"),
]
_SELF_QKV = re.compile(r"^decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_SWIN_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_SWIN_QKV = re.compile(r"^blocks\.(\d+)\.attention\.(?:self\.(query|key|value)|(q_proj|k_proj|v_proj))\.(weight|bias)$")


def _swin_name(rest: str) -> str | None:
    """HF Swin name (after ``model.pixel_level_module.encoder.[swin.]``) -> ours without qkv, or None."""
    if rest.startswith("embeddings.patch_embeddings.projection."):
        return "backbone.patch_embed.proj." + rest.rsplit(".", 1)[-1]
    if rest.startswith("embeddings.norm."):
        return "backbone.patch_embed.norm." + rest.rsplit(".", 1)[-1]
    match = re.match(r"^hidden_states_norms\.stage(\d)\.(weight|bias)$", rest)
    if match:
        return f"backbone.norm{int(match.group(1)) - 1}.{match.group(2)}"
    match = _SWIN_LAYER.match(rest)
    if not match:
        return None
    stage, tail = match.group(1), match.group(2)
    if tail.startswith("downsample."):
        return f"backbone.layers.{stage}.{tail}"
    block = re.match(r"^blocks\.(\d+)\.(.+)$", tail)
    if not block:
        return None
    for old, new in _SWIN_BLOCK_PARTS:
        if block.group(2).startswith(old):
            return f"backbone.layers.{stage}.blocks.{block.group(1)}.{new}{block.group(2)[len(old) :]}"
    return None


def hf_state_to_ours(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str], dict[str, str]]:
    """Rename an HF Mask2Former state dict; returns (tensors in our names, our name -> HF name, ignored HF keys).

    HF keys without a counterpart keep their HF name (they surface as "unexpected"). Split q/k/v Linears are
    concatenated into our packed ``in_proj`` / ``qkv`` tensors (rows q; k; v) when all three are present.
    """
    out: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    ignored: dict[str, str] = {}
    packs: dict[str, dict[int, tuple[str, Tensor]]] = {}

    def put(ours: str, key: str, tensor: Tensor) -> None:
        out[ours] = tensor
        names[ours] = key

    for key, tensor in state.items():
        if key == "criterion.empty_weight":
            ignored[key] = "loss buffer (no-object class weight), not a model tensor"
            continue
        if key.startswith("class_predictor."):
            put(PRED + "class_embed." + key[len("class_predictor.") :], key, tensor)
            continue
        if key.startswith(BACKBONE):
            rest = key[len(BACKBONE) :]
            rest = rest[len("swin.") :] if rest.startswith("swin.") else rest
            if rest.startswith("layernorm."):
                ignored[key] = "final classification LayerNorm of HF's SwinModel, unused by the backbone"
                continue
            if rest.endswith("relative_position_index"):
                ignored[key] = "constant buffer, derived from the window size"
                continue
            qkv = _SWIN_QKV.match(rest.split(".", 3)[3]) if rest.startswith("encoder.layers.") else None
            if qkv:
                stage = rest.split(".")[2]
                which = _QKV_V4.get(qkv.group(2) or "", _QKV_V5.get(qkv.group(3) or "", 0))
                packs.setdefault(f"backbone.layers.{stage}.blocks.{qkv.group(1)}.attn.qkv.{qkv.group(4)}", {})[
                    which
                ] = (key, tensor)
                continue
            ours = _swin_name(rest)
        elif key.startswith(PIXEL):
            ours = _apply_rules(_PIXEL_RULES, key[len(PIXEL) :], PD)
        elif key.startswith(TRANSFORMER):
            rest = key[len(TRANSFORMER) :]
            qkv = _SELF_QKV.match(rest)
            if qkv:
                which = "qkv".index(qkv.group(2))
                target = f"{PRED}transformer_self_attention_layers.{qkv.group(1)}.self_attn.in_proj_{qkv.group(3)}"
                packs.setdefault(target, {})[which] = (key, tensor)
                continue
            ours = _apply_rules(_TRANSFORMER_RULES, rest, PRED)
        else:
            ours = None
        put(ours or key, key, tensor)

    for target, parts in packs.items():
        if sorted(parts) == [0, 1, 2]:
            put(target, " + ".join(parts[i][0] for i in range(3)), torch.cat([parts[i][1] for i in range(3)], 0))
        else:  # incomplete: report the pieces as they are
            for key, tensor in parts.values():
                put(key, key, tensor)
    return out, names, ignored


def _apply_rules(rules: list[tuple[re.Pattern[str], str]], rest: str, prefix: str) -> str | None:
    for pattern, replacement in rules:
        if pattern.match(rest):
            return prefix + pattern.sub(replacement, rest)
    return None


# ----------------------------------------------------------------------------------------------- files


def read_hf_config(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, preprocessor_config.json or {}) of an HF Mask2Former model directory."""
    root = Path(path)
    if not root.exists():
        raise ConversionError(f"{root}: no such directory")
    if not root.is_dir():
        raise ConversionError(
            f"{root}: --from hf expects a Hugging Face model directory (config.json + model.safetensors), got a "
            "file; for a .pth / .pkl use --from detectron2, --from torchvision-resnet or --from swin"
        )
    config = _read_json(root / "config.json", required=True)
    if config.get("format") == "faseg-checkpoint":
        raise ConversionError(f"{root}: already a faseg checkpoint directory; load it with from_pretrained")
    if config.get("model_type") != "mask2former":
        raise ConversionError(
            f"{root}/config.json: model_type is {config.get('model_type')!r}, not 'mask2former'; only Hugging Face "
            "Mask2Former checkpoints are supported"
        )
    return config, _read_json(root / "preprocessor_config.json", required=False)


def read_hf_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of an HF model directory (single or sharded safetensors / pytorch_model.bin)."""
    return _read_hf_weights(Path(path))


def _read_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path}: missing; {path.parent} is not a Hugging Face model directory")
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return doc


def _read_hf_weights(root: Path) -> dict[str, Tensor]:
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (root / single).is_file():
            return _read_weight_file(root / single)
        if (root / index_name).is_file():
            index = _read_json(root / index_name, required=True)
            files = sorted(set((index.get("weight_map") or {}).values()))
            if not files:
                raise ConversionError(f"{root / index_name}: no weight_map")
            state: dict[str, Tensor] = {}
            for name in files:
                state.update(_read_weight_file(root / name))
            return state
    raise ConversionError(f"{root}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise ConversionError(f"{path}: missing (listed in the shard index)")
    if path.name.endswith(".safetensors"):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConversionError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConversionError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path}: not a state dict")
    return state


# ----------------------------------------------------------------------------------------------- conversion


def convert_hf(
    path: str | os.PathLike[str],
    cfg: ModelConfig | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    warm_start: bool = False,
    allow_partial: bool = False,
) -> Conversion:
    """Import an HF Mask2Former directory. Without ``cfg`` the config is derived from its ``config.json``
    (plus ``overrides``); with ``warm_start`` the target is FASeg (:func:`faseg_config_from_mask2former` or
    ``cfg``) and FASeg's own parts start fresh (:mod:`.warm_start`)."""
    source = str(path)
    hf_config, preprocessor = read_hf_config(path)
    derived, classes = config_from_hf(hf_config, preprocessor, source)  # validates before reading weights
    state = read_hf_weights(path)
    layout = sniff_layout(state)
    if layout != "hf":
        raise ConversionError(f"{source}: the weights are not a Hugging Face Mask2Former state dict ({layout} names)")
    notes = []
    if cfg is None:
        cfg = faseg_config_from_mask2former(derived) if warm_start else derived
    else:
        notes.append(f"target config {cfg.name!r} given explicitly; the HF config only supplied the weights")
    cfg = apply_overrides(cfg, list(overrides))
    for name in ("attention_probs_dropout_prob", "hidden_dropout_prob"):
        if float(hf_config["backbone_config"].get(name, 0.0)):
            notes.append(f"HF Swin {name} is ignored (our Swin has no dropout; inference is unaffected)")

    mapped, names, ignored = hf_state_to_ours(state)
    # Same architecture checks as for official checkpoints (the names are official after our rename).
    facts = inspect_state({ours_to_official(k): v for k, v in mapped.items()})
    notes += check_architecture(facts, cfg, source, warm_start=warm_start, allow_partial=allow_partial)
    model = build_model(cfg)
    report = ConversionReport(source, "hf", cfg.name, ignored=ignored, notes=notes)
    load_full_model(model, mapped, names, report, warm_start=warm_start, allow_partial=allow_partial)
    keep_classes = classes if len(classes) == cfg.num_classes else None
    return Conversion(model.eval(), report, keep_classes, cfg.default_input_size)
