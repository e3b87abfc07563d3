"""Official detectron2 checkpoints (FASeg / Mask2Former) -> faseg: key sets, round trips, warm start, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import from_pretrained, save_pretrained
from faseg.model.config import ModelConfig, apply_overrides
from faseg.model.convert import (
    ConversionError,
    convert,
    convert_detectron2_state_dict,
    faseg_layer_for,
    official_to_ours,
    ours_to_official,
    save_detectron2,
    to_detectron2_state_dict,
)

from faseg.cli import main as cli_main

# ------------------------------------------------------------------ the official key set, from spec §5.2 alone

FROZEN_BN = ("weight", "bias", "running_mean", "running_var")
WB = ("weight", "bias")


def official_r50_keys(faseg: bool, dec_layers: int, enc_layers: int = 6) -> set[str]:
    """Every tensor name of an official R50 FASeg / Mask2Former checkpoint, written out from the naming rules
    (spec §5.2), independently of our model code."""
    keys = {"backbone.stem.conv1.weight", *(f"backbone.stem.conv1.norm.{p}" for p in FROZEN_BN)}
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for j in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if j == 0 else [])
            for conv in convs:
                keys.add(f"backbone.res{stage}.{j}.{conv}.weight")
                keys |= {f"backbone.res{stage}.{j}.{conv}.norm.{p}" for p in FROZEN_BN}
    pd = "sem_seg_head.pixel_decoder."
    for i in range(4 if faseg else 3):
        keys |= {f"{pd}input_proj.{i}.{s}.{p}" for s in (0, 1) for p in WB}
    if faseg:
        keys |= {f"{pd}pos_linear.{i}.{p}" for i in range(4) for p in WB}
    keys.add(f"{pd}transformer.level_embed")
    for n in range(enc_layers):
        layer = f"{pd}transformer.encoder.layers.{n}."
        keys |= {
            f"{layer}self_attn.{m}.{p}"
            for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
            for p in WB
        }
        keys |= {f"{layer}{m}.{p}" for m in ("norm1", "linear1", "linear2", "norm2") for p in WB}
    keys |= {f"{pd}mask_features.{p}" for p in WB}
    keys |= {f"{pd}adapter_1.weight", *(f"{pd}adapter_1.norm.{p}" for p in WB)}
    keys |= {f"{pd}layer_1.weight", *(f"{pd}layer_1.norm.{p}" for p in WB)}
    pr = "sem_seg_head.predictor."
    for i in range(dec_layers):
        attn = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
        keys |= {f"{pr}transformer_self_attention_layers.{i}.self_attn.{a}" for a in attn}
        keys |= {f"{pr}transformer_self_attention_layers.{i}.norm.{p}" for p in WB}
        keys |= {f"{pr}transformer_cross_attention_layers.{i}.multihead_attn.{a}" for a in attn}
        keys |= {f"{pr}transformer_cross_attention_layers.{i}.norm.{p}" for p in WB}
        keys |= {f"{pr}transformer_ffn_layers.{i}.{m}.{p}" for m in ("linear1", "linear2", "norm") for p in WB}
    keys |= {f"{pr}decoder_norm.{p}" for p in WB}
    keys |= {f"{pr}query_feat.weight", f"{pr}query_embed.weight", f"{pr}level_embed.weight"}
    keys |= {f"{pr}class_embed.{p}" for p in WB}
    keys |= {f"{pr}mask_embed.layers.{i}.{p}" for i in range(3) for p in WB}
    if faseg:
        keys |= {f"{pr}adapt_pos2d.{i}.{p}" for i in (0, 2) for p in WB}
    keys.add("criterion.empty_weight")
    return keys


@pytest.mark.parametrize(
    ("preset", "faseg", "dec_layers"), [("faseg_r50_ade20k", True, 13), ("mask2former_r50_ade20k", False, 9)]
)
def test_official_key_set_maps_one_to_one(preset: str, faseg: bool, dec_layers: int) -> None:
    official = official_r50_keys(faseg, dec_layers)
    model = build_model(get_preset(preset))
    own = model.state_dict()
    weights = official - {"criterion.empty_weight"}
    mapped = {official_to_ours(k) for k in weights}
    assert len(mapped) == len(weights), "two official keys map to one parameter"
    assert mapped == set(own), (sorted(mapped - set(own))[:5], sorted(set(own) - mapped)[:5])
    assert all(ours_to_official(official_to_ours(k)) == k for k in official)
    assert {ours_to_official(k) for k in own} == weights

    # The converter accepts exactly this key set (+ FrozenBN counters from a SyncBN-era file) and reports
    # what it dropped. Tensors: the model's own values under the official names (no forward needed).
    state = {k: own[official_to_ours(k)] for k in weights}
    state["criterion.empty_weight"] = torch.ones(151)
    state["backbone.res2.0.conv1.norm.num_batches_tracked"] = torch.tensor(7)
    conv = convert_detectron2_state_dict(state, get_preset(preset), source="official")
    report = conv.report
    assert report.exact and not report.fresh
    assert len(report.loaded) == len(own)
    assert set(report.ignored) == {"criterion.empty_weight", "backbone.res2.0.conv1.norm.num_batches_tracked"}


# ------------------------------------------------------------------ round trips through the official layout


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("d2") / "tiny.pth"
    return save_detectron2(randomise(build_model(get_preset("faseg_tiny")), 6), path)


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturb every float tensor (incl. BN statistics) so no tensor is left at a trivial init value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=g) * 0.02
                tensor.copy_(tensor.abs() + 0.5 if name.endswith("running_var") else tensor + noise)
    return model.eval()


def tiny_mask2former() -> ModelConfig:
    return apply_overrides(
        get_preset("faseg_tiny"),
        [
            'name="mask2former_tiny"',
            'pixel_decoder.key_pe="sine"',
            'decoder.positional_queries="learnable"',
            'decoder.hrca="off"',
            "decoder.mask_threshold=0.5",
            "decoder.dec_layers=6",
        ],
    )


def tiny_swin() -> ModelConfig:
    return apply_overrides(
        get_preset("faseg_tiny"),
        [
            'name="faseg_swin_tiny_test"',
            'backbone.type="swin"',
            "backbone.swin.embed_dim=32",
            "backbone.swin.depths=[1,1,2,1]",
            "backbone.swin.num_heads=[1,2,2,4]",
            "backbone.swin.window_size=4",
        ],
    )


IMAGES = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(0)) * 255  # >= 32 tokens at 1/32


@pytest.mark.parametrize(
    "make_cfg",
    [lambda: get_preset("faseg_tiny"), tiny_mask2former, tiny_swin],
    ids=["faseg_tiny", "mask2former_tiny", "faseg_swin_tiny"],
)
def test_official_layout_round_trip_is_exact(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg()
    torch.manual_seed(0)
    model = randomise(build_model(cfg), 1)
    for fmt in ("pth", "pkl"):
        path = save_detectron2(model, tmp_path / f"model_final.{fmt}")
        torch.manual_seed(123)  # the freshly built target gets different random weights
        conv = convert("detectron2", path, cfg)
        assert conv.report.exact and not conv.report.fresh and not conv.report.missing
        assert set(conv.report.ignored) == {"criterion.empty_weight"}
        for (key, a), b in zip(model.state_dict().items(), conv.model.state_dict().values(), strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b), (fmt, key)
    with torch.no_grad():  # identical tensors -> identical outputs; checked once, on the .pkl import
        want, got = model(IMAGES), conv.model(IMAGES)
    assert torch.equal(want.pred_logits, got.pred_logits)
    assert torch.equal(want.pred_masks, got.pred_masks)
    for a, b in zip(want.aux_outputs, got.aux_outputs, strict=True):
        assert torch.equal(a["pred_masks"], b["pred_masks"])


def test_frozen_bn_counters_and_static_query_are_handled(tmp_path: Path) -> None:
    cfg = apply_overrides(get_preset("faseg_tiny"), ['backbone.resnet.norm="FrozenBN"'])
    model = randomise(build_model(cfg), 2)
    state = to_detectron2_state_dict(model)
    state["backbone.stem.conv1.norm.num_batches_tracked"] = torch.tensor(3)  # a SyncBN-era file
    state["sem_seg_head.predictor.static_query.weight"] = state.pop("sem_seg_head.predictor.query_feat.weight")
    conv = convert_detectron2_state_dict(state, cfg)
    assert conv.report.exact
    assert "backbone.stem.conv1.norm.num_batches_tracked" in conv.report.ignored
    assert any("static_query" in note for note in conv.report.notes)
    assert torch.equal(
        conv.model.sem_seg_head.predictor.query_feat.weight, model.sem_seg_head.predictor.query_feat.weight
    )


def test_preset_is_inferred_when_unambiguous(tmp_path: Path, tiny_checkpoint: Path) -> None:
    conv = convert("detectron2", tiny_checkpoint)
    assert conv.model.cfg.name == "faseg_tiny"
    assert any("inferred" in note for note in conv.report.notes)
    path = save_detectron2(build_model(tiny_swin()), tmp_path / "swin.pth")
    with pytest.raises(ConversionError, match=r"cannot infer the config.*--preset"):
        convert("detectron2", path)


# ------------------------------------------------------------------ warm start


def test_warm_start_maps_mask2former_layers_by_level(tmp_path: Path) -> None:
    src = randomise(build_model(tiny_mask2former()), 4)
    path = save_detectron2(src, tmp_path / "m2f.pkl")
    target = get_preset("faseg_tiny")  # 9 layers: HRCA at 3 and 7, final 1/32 layer 8

    with pytest.raises(ConversionError, match=r"another architecture.*--warm-start"):
        convert("detectron2", path, target)

    conv = convert("detectron2", path, target, warm_start=True)
    report = conv.report
    assert report.exact
    assert [faseg_layer_for(j) for j in range(6)] == [0, 1, 2, 4, 5, 6]
    src_pred, dst_pred = src.sem_seg_head.predictor, conv.model.sem_seg_head.predictor
    for j in range(6):
        i = faseg_layer_for(j)
        for group in (
            "transformer_self_attention_layers",
            "transformer_cross_attention_layers",
            "transformer_ffn_layers",
        ):
            for a, b in zip(
                getattr(src_pred, group)[j].parameters(), getattr(dst_pred, group)[i].parameters(), strict=True
            ):
                assert torch.equal(a, b), (group, j, i)
    assert torch.equal(dst_pred.level_embed.weight[:3], src_pred.level_embed.weight)
    assert torch.equal(dst_pred.pos_queries.query_embed.weight, src_pred.pos_queries.query_embed.weight)
    assert torch.equal(src.backbone.stem.conv1.weight, conv.model.backbone.stem.conv1.weight)

    fresh_modules = {".".join(k.split(".")[:4]) for k in report.fresh}
    assert fresh_modules == {
        "sem_seg_head.pixel_decoder.pos_linear.0",
        "sem_seg_head.pixel_decoder.pos_linear.1",
        "sem_seg_head.pixel_decoder.pos_linear.2",
        "sem_seg_head.pixel_decoder.pos_linear.3",
        "sem_seg_head.pixel_decoder.input_proj.3",
        "sem_seg_head.predictor.pos_queries.adapt_pos2d",
        *(
            f"sem_seg_head.predictor.{g}.{i}"
            for i in (3, 7, 8)
            for g in (
                "transformer_self_attention_layers",
                "transformer_cross_attention_layers",
                "transformer_ffn_layers",
            )
        ),
    }
    assert set(report.partial) == {"sem_seg_head.predictor.level_embed.weight"}
    with torch.no_grad():
        out = conv.model(IMAGES)
    assert torch.isfinite(out.pred_masks).all()

    faseg_path = save_detectron2(randomise(build_model(target), 5), tmp_path / "faseg.pth")
    with pytest.raises(ConversionError, match=r"already FASeg"):
        convert("detectron2", faseg_path, target, warm_start=True)


# ------------------------------------------------------------------ errors


def test_corrupt_files_are_reported(tmp_path: Path, tiny_checkpoint: Path) -> None:
    data = tiny_checkpoint.read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "random.pkl": os.urandom(256),
        "empty.pth": b"",
        "text.pth": b"hello world\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConversionError, match=r"not a readable checkpoint|empty file"):
            convert("detectron2", tmp_path / name, get_preset("faseg_tiny"))
    with pytest.raises(ConversionError, match=r"no such file"):
        convert("detectron2", tmp_path / "missing.pth", get_preset("faseg_tiny"))
    with pytest.raises(ConversionError, match=r"no tensors|non-tensor"):
        torch.save({"model": {"a": "text"}}, tmp_path / "notensors.pth")
        convert("detectron2", tmp_path / "notensors.pth", get_preset("faseg_tiny"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_pickles_cannot_run_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.x": _Payload()}}))
    with pytest.raises(ConversionError, match=r"refusing to load global"):
        convert("detectron2", path, get_preset("faseg_tiny"))


def test_wrong_format_flag_points_at_the_right_one(tmp_path: Path, tiny_checkpoint: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "tv.pth")
    with pytest.raises(ConversionError, match=r"use --from torchvision-resnet"):
        convert("detectron2", tmp_path / "tv.pth", get_preset("faseg_tiny"))
    with pytest.raises(ConversionError, match=r"detectron2 checkpoint; use --from detectron2"):
        convert("torchvision-resnet", tiny_checkpoint, get_preset("faseg_tiny"))
    with pytest.raises(ConversionError, match=r"detectron2 checkpoint; use --from detectron2"):
        convert("swin", tiny_checkpoint, get_preset("faseg_tiny"))
    ours = save_pretrained(build_model(get_preset("faseg_tiny")), tmp_path / "ours")
    with pytest.raises(ConversionError, match=r"already a faseg checkpoint"):
        convert("detectron2", ours, get_preset("faseg_tiny"))


def test_other_architecture_and_class_count_mismatch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(ConversionError, match=r"another architecture.*ResNet-50"):
        convert("detectron2", tiny_checkpoint, get_preset("faseg_r50_ade20k"))
    with pytest.raises(ConversionError, match=r"another architecture.*swin"):
        convert("detectron2", tiny_checkpoint, tiny_swin())
    with pytest.raises(ConversionError, match=r"another architecture.*Mask2Former"):
        convert("detectron2", tiny_checkpoint, tiny_mask2former())
    with pytest.raises(ConversionError, match=r"class-count mismatch.*8 classes.*has 5"):
        convert("detectron2", tiny_checkpoint, get_preset("faseg_tiny", ["num_classes=5"]))

    conv = convert("detectron2", tiny_checkpoint, get_preset("faseg_tiny", ["num_classes=5"]), allow_partial=True)
    assert not conv.report.exact
    assert {k for k, _, _ in conv.report.mismatched} == {
        "sem_seg_head.predictor.class_embed.weight",
        "sem_seg_head.predictor.class_embed.bias",
    }
    assert "sem_seg_head.predictor.class_embed.weight" in conv.report.left_fresh
    assert conv.model.sem_seg_head.predictor.class_embed.weight.shape == (6, 64)


def test_missing_and_unexpected_keys_fail_unless_partial(tmp_path: Path) -> None:
    cfg = get_preset("faseg_tiny")
    model = randomise(build_model(cfg), 7)
    state = to_detectron2_state_dict(model)
    del state["sem_seg_head.pixel_decoder.mask_features.bias"]
    state["sem_seg_head.predictor.something_new.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError) as info:
        convert_detectron2_state_dict(state, cfg)
    message = str(info.value)
    assert "missing from the source" in message and "sem_seg_head.pixel_decoder.mask_features.bias" in message
    assert "unexpected in the source" in message and "something_new" in message
    conv = convert_detectron2_state_dict(state, cfg, allow_partial=True)
    assert conv.report.missing == ["sem_seg_head.pixel_decoder.mask_features.bias"]
    assert conv.report.unexpected == ["sem_seg_head.predictor.something_new.weight"]


def test_cli_writes_nothing_on_failure_and_a_loadable_checkpoint_on_success(
    tmp_path: Path, tiny_checkpoint: Path, capsys
) -> None:
    out = tmp_path / "out"
    code = cli_main(
        [
            "convert",
            "--from",
            "detectron2",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--preset",
            "faseg_tiny",
            "--set",
            "num_classes=3",
        ]
    )
    assert code == 2 and not out.exists()
    assert "class-count mismatch" in capsys.readouterr().err

    report_path = tmp_path / "report.json"
    code = cli_main(
        [
            "convert",
            "--from",
            "detectron2",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--preset",
            "faseg_tiny",
            "--classes",
            "a,b,c,d,e,f,g,h",
            "--report-json",
            str(report_path),
        ]
    )
    assert code == 0
    assert "result: exact" in capsys.readouterr().out
    loaded = from_pretrained(out)
    assert loaded.checkpoint_info.classes == list("abcdefgh")
    assert loaded.checkpoint_info.metadata["converted_from"]["format"] == "detectron2"
    assert report_path.read_text().count("criterion.empty_weight") == 1
    original = convert("detectron2", tiny_checkpoint, get_preset("faseg_tiny")).model
    for (k, a), b in zip(original.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    code = cli_main(["convert", "--from", "detectron2", str(tiny_checkpoint), "--out", str(out)])
    assert code == 2 and "not empty" in capsys.readouterr().err
