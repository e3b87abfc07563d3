"""ImageNet backbone weights into a preset, for fine-tuning (``--from torchvision-resnet`` / ``--from swin``).

Only the backbone comes from the file; the pixel decoder and the transformer decoder are reported as newly
initialised (by design, not an error). The backbone itself must load exactly.

torchvision ResNet (``resnet18/34/50/101/152`` state dicts, e.g. ``resnet50-0676ba61.pth``)::

    conv1.weight                       -> backbone.stem.conv1.weight
    bn1.*                              -> backbone.stem.conv1.norm.*
    layer{k}.{j}.conv{n}.weight        -> backbone.res{k+1}.{j}.conv{n}.weight
    layer{k}.{j}.bn{n}.*               -> backbone.res{k+1}.{j}.conv{n}.norm.*
    layer{k}.{j}.downsample.0.weight   -> backbone.res{k+1}.{j}.shortcut.weight
    layer{k}.{j}.downsample.1.*        -> backbone.res{k+1}.{j}.shortcut.norm.*
    fc.*                               ignored (ImageNet classifier)

torchvision puts the stride on the 3×3 conv, so the target config must have ``stride_in_1x1: false`` (as
every FASeg preset does). ``num_batches_tracked`` is dropped for a FrozenBN backbone.

Official Swin (microsoft/Swin-Transformer ``swin_*_patch4_window*`` ``.pth`` with ``{"model": ...}``, or the
``.pkl`` that Mask2Former's ``convert-pretrained-swin-model-to-d2.py`` writes): names already match our
backbone, so ``patch_embed.* / layers.* / absolute_pos_embed`` gain the ``backbone.`` prefix. Dropped: the
classifier ``head.*``, the final ``norm.*`` (the segmentation backbone has one LayerNorm per output stage,
``norm0..norm3``, which the official recipe also initialises fresh) and the ``attn_mask`` buffers.

A detectron2 backbone file (``stem.*`` / ``res{2..5}.*``, e.g. ``ImageNetPretrained/torchvision/R-50.pkl``) goes
through :func:`faseg.model.convert.convert_detectron2`, which prefixes it the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from torch import Tensor

from ..backbone.resnet import _BLOCKS_PER_STAGE
from ..config import ModelConfig, apply_overrides
from ..faseg import build_model
from .files import extract_state_dict, read_checkpoint_file, sniff_layout, wrong_layout_error
from .report import Conversion, ConversionError, ConversionReport, load_converted

_TV_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(.+)$")
_STAGE_NORM = re.compile(r"^backbone\.norm\d\.")


def torchvision_resnet_name(key: str) -> str | None:
    """torchvision ResNet name -> ours, or None when it has no counterpart."""
    if key.startswith("conv1."):
        return "backbone.stem.conv1." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "backbone.stem.conv1.norm." + key[len("bn1.") :]
    match = _TV_BLOCK.match(key)
    if not match:
        return None
    stage, block, part, leaf = int(match.group(1)), match.group(2), match.group(3), match.group(4)
    prefix = f"backbone.res{stage + 1}.{block}."
    if part.startswith("conv"):
        return f"{prefix}{part}.{leaf}"
    if part.startswith("bn"):
        return f"{prefix}conv{part[2:]}.norm.{leaf}"
    return f"{prefix}shortcut.{leaf}" if part == "downsample.0" else f"{prefix}shortcut.norm.{leaf}"


def _convert_backbone_file(
    path: str | os.PathLike[str],
    cfg: ModelConfig | None,
    source_format: str,
    classify: Callable[[str], tuple[str | None, str | None]],
    *,
    overrides: list[str] | tuple[str, ...],
    allow_partial: bool,
) -> Conversion:
    """Read a backbone checkpoint, check its layout is ``source_format``, and map it: ``classify(key)`` gives
    (our name, None) for a key that is kept or (None, why) for one that is ignored."""
    source = str(path)
    state, _ = extract_state_dict(read_checkpoint_file(path, source_format), source)
    layout = sniff_layout(state)
    if layout != source_format:
        raise wrong_layout_error(source, layout, source_format)
    mapped: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    ignored: dict[str, str] = {}
    for key, tensor in state.items():
        ours, reason = classify(key)
        if ours is None:
            ignored[key] = reason or "not used"
            continue
        mapped[ours] = tensor
        names[ours] = key
    return convert_backbone_state_dict(
        mapped,
        cfg,
        source=source,
        source_format=source_format,
        overrides=overrides,
        allow_partial=allow_partial,
        ignored=ignored,
        source_names=names,
    )


def _torchvision_resnet_key(key: str) -> tuple[str | None, str | None]:
    if key.startswith("fc."):
        return None, "ImageNet classifier"
    return torchvision_resnet_name(key) or key, None


def _swin_key(key: str) -> tuple[str | None, str | None]:
    if key.startswith("head."):
        return None, "ImageNet classifier"
    if key.startswith("norm."):
        return None, "classification-only final LayerNorm (the per-stage norm0..norm3 are new)"
    if key.endswith(".attn_mask"):
        return None, "shift mask buffer: recomputed for every input size"
    return "backbone." + key, None


def convert_torchvision_resnet(
    path: str | os.PathLike[str],
    cfg: ModelConfig | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    allow_partial: bool = False,
) -> Conversion:
    return _convert_backbone_file(
        path, cfg, "torchvision-resnet", _torchvision_resnet_key, overrides=overrides, allow_partial=allow_partial
    )


def convert_swin(
    path: str | os.PathLike[str],
    cfg: ModelConfig | None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    allow_partial: bool = False,
) -> Conversion:
    return _convert_backbone_file(path, cfg, "swin", _swin_key, overrides=overrides, allow_partial=allow_partial)


def _check_backbone(state: dict[str, Tensor], cfg: ModelConfig, source: str, source_format: str) -> None:
    keys = set(state)
    bb = cfg.backbone
    if "backbone.stem.conv1.weight" in keys:
        if bb.type != "resnet":
            raise ConversionError(
                f"{source}: checkpoint of another architecture: ResNet weights, but config {cfg.name!r} has a "
                f"{bb.type} backbone"
            )
        blocks = tuple(
            len({m.group(1) for k in keys if (m := re.match(rf"backbone\.res{s}\.(\d+)\.conv1\.weight$", k))})
            for s in range(2, 6)
        )
        bottleneck = any(k.startswith("backbone.res2.0.conv3.") for k in keys)
        if blocks != _BLOCKS_PER_STAGE.get(bb.resnet.depth) or bottleneck != (bb.resnet.depth >= 50):
            depth = next((d for d, b in _BLOCKS_PER_STAGE.items() if b == blocks and (d >= 50) == bottleneck), None)
            raise ConversionError(
                f"{source}: checkpoint of another architecture: "
                f"{f'ResNet-{depth}' if depth else f'a ResNet with blocks {list(blocks)}'} weights, but config "
                f"{cfg.name!r} is ResNet-{bb.resnet.depth} (--set backbone.resnet.depth=...)"
            )
        if source_format == "torchvision-resnet" and bottleneck and bb.resnet.stride_in_1x1:
            raise ConversionError(
                f"{source}: torchvision ResNets stride in the 3x3 conv, but config {cfg.name!r} has "
                "backbone.resnet.stride_in_1x1=true; the weights would compute something else"
            )
    elif "backbone.patch_embed.proj.weight" in keys:
        if bb.type != "swin":
            raise ConversionError(
                f"{source}: checkpoint of another architecture: Swin weights, but config {cfg.name!r} has a "
                f"{bb.type} backbone"
            )
        embed = int(state["backbone.patch_embed.proj.weight"].shape[0])
        depths = tuple(
            len({m.group(1) for k in keys if (m := re.match(rf"backbone\.layers\.{s}\.blocks\.(\d+)\.", k))})
            for s in range(4)
        )
        if embed != bb.swin.embed_dim or depths != tuple(bb.swin.depths):
            raise ConversionError(
                f"{source}: checkpoint of another architecture: Swin with embed_dim {embed}, depths {list(depths)}; "
                f"config {cfg.name!r} has embed_dim {bb.swin.embed_dim}, depths {list(bb.swin.depths)}"
            )
        table = state.get("backbone.layers.0.blocks.0.attn.relative_position_bias_table")
        if table is not None:
            window = (round(table.shape[0] ** 0.5) + 1) // 2
            if window != bb.swin.window_size:
                raise ConversionError(
                    f"{source}: Swin window-size mismatch: the weights are for window {window}, config "
                    f"{cfg.name!r} has window {bb.swin.window_size} (--set backbone.swin.window_size={window})"
                )
    else:
        raise ConversionError(f"{source}: no backbone tensors recognised")


def convert_backbone_state_dict(
    state: dict[str, Tensor],
    cfg: ModelConfig | None,
    *,
    source: str,
    source_format: str,
    overrides: list[str] | tuple[str, ...] = (),
    allow_partial: bool = False,
    ignored: dict[str, str] | None = None,
    source_names: dict[str, str] | None = None,
) -> Conversion:
    """Load backbone tensors (our names, ``backbone.`` prefixed) into a freshly built model of ``cfg``."""
    if cfg is None:
        raise ConversionError(
            f"{source}: backbone-only weights need a target config: pass --preset (e.g. faseg_r50_ade20k)"
        )
    cfg = apply_overrides(cfg, list(overrides))
    _check_backbone(state, cfg, source, source_format)
    model = build_model(cfg)
    own = model.state_dict()
    report = ConversionReport(source, source_format, cfg.name, ignored=dict(ignored or {}))
    report.notes.append("backbone-only weights: the pixel decoder and the transformer decoder start fresh")
    mapped = {}
    for key, tensor in state.items():
        if key.endswith(".num_batches_tracked") and key not in own:
            report.ignored[(source_names or {}).get(key, key)] = (
                "BatchNorm batch counter; the model's FrozenBN has none"
            )
        else:
            mapped[key] = tensor
    swin = cfg.backbone.type == "swin"

    def expected_fresh(key: str) -> bool:
        return not key.startswith("backbone.") or (swin and bool(_STAGE_NORM.match(key)))

    load_converted(
        model,
        mapped,
        report,
        expected_fresh=expected_fresh,
        allow_partial=allow_partial,
        source_names=source_names,
    )
    return Conversion(model.eval(), report)
