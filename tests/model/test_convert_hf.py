"""Hugging Face Mask2Former -> faseg: numerical parity with transformers, config derivation, naming, errors.

A small random ``Mask2FormerForUniversalSegmentation`` (Swin backbone) is saved with ``save_pretrained``,
converted with ``faseg convert --from hf``, reloaded with ``from_pretrained`` and compared in fp32 on one
padded, non-square batch of 2: backbone features, pixel-decoder maps and mask features, and the class and mask
logits of every decoder layer (max abs difference <= 1e-5; measured: at most 2.5e-6, in the pixel decoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from faseg.model.checkpoint import from_pretrained
from faseg.model.convert import ConversionError, config_from_hf, convert, convert_hf, hf_state_to_ours
from faseg.model.inference import pad_to_multiple
from safetensors.torch import load_file

from faseg.cli import main as cli_main

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # measured 2026-12-03: 2.5e-6 at most over the three parity tests
STAGES = ["stage1", "stage2", "stage3", "stage4"]

# Two configs that differ in every size the converter derives: Swin width / depths / heads / window (4 divides
# every map of the test input, 3 does not, so Swin's padding path runs), pixel-decoder width, mask width
# (!= width in B), encoder / decoder depth, heads, queries and classes.
CONFIGS = {
    "A": (
        dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0),
        dict(
            feature_size=64,
            mask_feature_size=64,
            hidden_dim=64,
            encoder_feedforward_dim=128,
            encoder_layers=2,
            decoder_layers=4,
            num_attention_heads=4,
            dim_feedforward=128,
            num_queries=10,
            num_labels=5,
        ),
    ),
    "B": (
        dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=3, drop_path_rate=0.1),
        dict(
            feature_size=32,
            mask_feature_size=48,
            hidden_dim=32,
            encoder_feedforward_dim=64,
            encoder_layers=1,
            decoder_layers=7,
            num_attention_heads=2,
            dim_feedforward=64,
            num_queries=7,
            num_labels=3,
        ),
    ),
}


def build_hf(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    swin, m2f = CONFIGS[name]
    torch.manual_seed(seed)
    config = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(out_features=STAGES, **swin),
        id2label={i: f"label {name}{i}" for i in range(m2f["num_labels"])},
        **{**m2f, **extra},
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():  # HF zero-inits many biases; make every tensor matter for the comparison
        for param_name, param in model.named_parameters():
            if param_name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.05)
    return model


def save_hf(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def max_diffs(ours: torch.nn.Module, hf: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Max abs difference of every compared output; both models see the same normalised tensor."""
    pixel_values = ours.normalize(images)
    with torch.no_grad():
        ref = hf(pixel_values=pixel_values, output_hidden_states=True, output_auxiliary_logits=True)
        feats = ours.backbone(pixel_values)
        pix = ours.sem_seg_head.pixel_decoder(feats)
        out = ours(images)
    diffs = {}
    for (name, feat), ref_feat in zip(feats.items(), ref.encoder_hidden_states, strict=True):
        diffs[f"backbone.{name}"] = (feat - ref_feat).abs().max().item()
    for level, (a, b) in enumerate(zip(pix.multi_scale_features, ref.pixel_decoder_hidden_states, strict=True)):
        diffs[f"pixel_decoder.level{level}"] = (a - b).abs().max().item()
    diffs["pixel_decoder.mask_features"] = (pix.mask_features - ref.pixel_decoder_last_hidden_state).abs().max().item()
    ours_preds = [*out.aux_outputs, {"pred_logits": out.pred_logits, "pred_masks": out.pred_masks}]
    ref_preds = [
        *ref.auxiliary_logits,
        {"class_queries_logits": ref.class_queries_logits, "masks_queries_logits": ref.masks_queries_logits},
    ]
    assert len(ours_preds) == len(ref_preds) == hf.config.decoder_layers
    for i, (a, b) in enumerate(zip(ours_preds, ref_preds, strict=True)):
        assert a["pred_logits"].shape == b["class_queries_logits"].shape
        assert a["pred_masks"].shape == b["masks_queries_logits"].shape
        diffs[f"layer{i}.class_logits"] = (a["pred_logits"] - b["class_queries_logits"]).abs().max().item()
        diffs[f"layer{i}.mask_logits"] = (a["pred_masks"] - b["masks_queries_logits"]).abs().max().item()
    return diffs


def padded_batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 90, 200, generator=g) * 255  # non-square, not a multiple of 32
    return pad_to_multiple(images, 32)  # -> 96 x 224, zero pad bottom/right


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_transformers_through_the_cli(name: str, tmp_path: Path, capsys) -> None:
    hf = build_hf(name)
    src = save_hf(hf, tmp_path / "hf")
    out = tmp_path / "ours"
    assert cli_main(["convert", "--from", "hf", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "result: exact" in printed and "criterion.empty_weight" in printed
    ours = from_pretrained(out)
    swin, m2f = CONFIGS[name]
    assert ours.cfg.backbone.swin.depths == tuple(swin["depths"])
    assert ours.cfg.decoder.dec_layers == m2f["decoder_layers"] - 1
    assert ours.checkpoint_info.classes == [f"label {name}{i}" for i in range(m2f["num_labels"])]

    diffs = max_diffs(ours, hf, padded_batch())
    report = "\n".join(f"{k:32s} {v:.2e}" for k, v in diffs.items())
    print(f"\nparity, config {name}:\n{report}")
    assert max(diffs.values()) <= TOL, report


def test_parity_pre_norm_decoder(tmp_path: Path) -> None:
    hf = build_hf("B", seed=3, pre_norm=True)
    conv = convert_hf(save_hf(hf, tmp_path / "hf"))
    assert conv.model.cfg.decoder.pre_norm
    diffs = max_diffs(conv.model, hf, padded_batch(1))
    assert max(diffs.values()) <= TOL, diffs


def test_config_is_derived_from_hf_config_and_preprocessor(tmp_path: Path) -> None:
    src = save_hf(build_hf("B"), tmp_path / "hf")
    (src / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.25, 0.25, 0.25],
                "rescale_factor": 1 / 255,
                "do_rescale": True,
                "size": {"shortest_edge": 500},
            }
        )
    )
    cfg, classes = config_from_hf(
        json.loads((src / "config.json").read_text()), json.loads((src / "preprocessor_config.json").read_text())
    )
    assert cfg.backbone.type == "swin"
    sw = cfg.backbone.swin
    assert (sw.embed_dim, sw.depths, sw.num_heads, sw.window_size) == (16, (2, 2, 2, 2), (1, 2, 2, 4), 3)
    assert (cfg.pixel_decoder.conv_dim, cfg.pixel_decoder.mask_dim, cfg.pixel_decoder.encoder_layers) == (32, 48, 1)
    assert cfg.pixel_decoder.key_pe == "sine" and cfg.pixel_decoder.encoder_heads == 2
    d = cfg.decoder
    assert (d.hidden_dim, d.num_queries, d.nheads, d.dim_feedforward, d.dec_layers) == (32, 7, 2, 64, 6)
    assert (d.positional_queries, d.hrca, d.mask_threshold) == ("learnable", "off", 0.5)
    assert cfg.num_classes == 3 and classes == ["label B0", "label B1", "label B2"]
    assert cfg.pixel_mean == pytest.approx((127.5,) * 3) and cfg.pixel_std == pytest.approx((63.75,) * 3)
    assert cfg.default_input_size == (512, 512)  # 500 rounded up to a multiple of 32


def test_v4_file_names_and_v5_module_names_map_identically(tmp_path: Path) -> None:
    hf = build_hf("A")
    on_disk = load_file(str(save_hf(hf, tmp_path / "hf") / "model.safetensors"))  # v4 names (HF saves these)
    in_memory = hf.state_dict()  # v5 module names
    assert set(on_disk) != set(in_memory)
    a, _, ignored_a = hf_state_to_ours(on_disk)
    b, _, ignored_b = hf_state_to_ours(in_memory)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "criterion.empty_weight" in ignored_a and "criterion.empty_weight" in ignored_b


def test_warm_start_faseg_from_hf_mask2former(tmp_path: Path) -> None:
    src = save_hf(build_hf("B"), tmp_path / "hf")
    conv = convert("hf", src, warm_start=True)
    cfg = conv.model.cfg
    assert cfg.decoder.hrca == "window" and cfg.decoder.positional_queries == "dfpq"
    assert cfg.decoder.dec_layers == 9  # 2 rounds of (3 levels + HRCA) + the final 1/32 layer
    assert conv.report.exact
    assert any(k.startswith("sem_seg_head.pixel_decoder.pos_linear.") for k in conv.report.fresh)
    assert "sem_seg_head.predictor.level_embed.weight" in conv.report.partial
    with torch.no_grad():
        out = conv.model(torch.rand(1, 3, 192, 192) * 255)
    assert out.pred_logits.shape == (1, 7, 4)


def test_class_count_override_fails_unless_partial(tmp_path: Path) -> None:
    src = save_hf(build_hf("A"), tmp_path / "hf")
    with pytest.raises(ConversionError, match=r"class-count mismatch"):
        convert("hf", src, overrides=["num_classes=4"])
    conv = convert("hf", src, overrides=["num_classes=4"], allow_partial=True)
    assert {k for k, _, _ in conv.report.mismatched} == {
        "sem_seg_head.predictor.class_embed.weight",
        "sem_seg_head.predictor.class_embed.bias",
    }
    assert conv.classes is None  # the HF names no longer fit


def test_hf_errors_name_the_problem(tmp_path: Path) -> None:
    src = save_hf(build_hf("A"), tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())

    # wrong flag in both directions
    with pytest.raises(ConversionError, match=r"use --from hf"):
        convert("detectron2", src, None)
    with pytest.raises(ConversionError, match=r"expects a Hugging Face model directory"):
        convert("hf", src / "model.safetensors")

    # not Mask2Former / not Swin
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "maskformer"}))
    with pytest.raises(ConversionError, match=r"not 'mask2former'"):
        convert("hf", other)
    (other / "config.json").write_text(
        json.dumps({**config, "backbone_config": {**config["backbone_config"], "model_type": "resnet"}})
    )
    with pytest.raises(ConversionError, match=r"only Swin"):
        convert("hf", other)

    # missing / corrupt weights
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"no weights"):
        convert("hf", other)
    (other / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConversionError, match=r"not a readable safetensors file"):
        convert("hf", other)

    # a checkpoint of another size: the config says 2 Swin blocks in stage 3, the weights hold more
    (other / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    bb = {**config["backbone_config"], "depths": [1, 1, 1, 1]}
    (other / "config.json").write_text(json.dumps({**config, "backbone_config": bb}))
    with pytest.raises(ConversionError, match=r"another architecture"):
        convert("hf", other)
