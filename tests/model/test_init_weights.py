"""`faseg train --init SRC`: any checkpoint `faseg convert` reads; class-head rows carried over by class name."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import CheckpointError, save_pretrained
from faseg.model.convert import convert_hf, save_detectron2, to_detectron2_state_dict
from faseg.model.convert.init_weights import detect_format, init_model
from faseg.model.convert.warm_start import CLASS_HEAD, carry_class_head, match_classes

SOURCE_CLASSES = ["sky", "grass", "road", "wall", "water", "sand", "tree", "vehicle", "pole", "ball"]
TARGET_CLASSES = ["Road", "person", "sky", "building", "tree"]  # road, sky, tree shared


def _random(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_match_classes_by_name_and_synonym() -> None:
    assert match_classes(["Road", "person", "sky"], ["sky", "road"]) == {0: 1, 2: 0}
    # ADE20K-style names with alternatives match any of them, the first source match wins.
    assert match_classes(["edifice", "car"], ["building, edifice", "car", "car"]) == {0: 0, 1: 1}
    assert match_classes(["edifice"], ["building, edifice", "edifice"]) == {0: 1}  # a whole name wins


def test_carry_class_head_rows_by_name() -> None:
    fresh = {CLASS_HEAD + "weight": torch.zeros(6, 4), CLASS_HEAD + "bias": torch.zeros(6)}
    src_w = torch.arange(11 * 4, dtype=torch.float32).reshape(11, 4) + 1
    source = {CLASS_HEAD + "weight": src_w, CLASS_HEAD + "bias": torch.arange(11, dtype=torch.float32) + 1}
    head, carry = carry_class_head(fresh, source, TARGET_CLASSES, SOURCE_CLASSES)
    assert carry.mode == "by_name"
    assert carry.carried == {"Road": "road", "sky": "sky", "tree": "tree"}
    assert carry.initialised == ["person", "building"]
    w = head[CLASS_HEAD + "weight"]
    assert torch.equal(w[0], src_w[2]) and torch.equal(w[2], src_w[0]) and torch.equal(w[4], src_w[6])
    assert torch.equal(w[1], torch.zeros(4)) and torch.equal(w[3], torch.zeros(4))
    assert torch.equal(w[5], src_w[10])  # no-object row
    assert head[CLASS_HEAD + "bias"].tolist() == [3.0, 0.0, 1.0, 0.0, 7.0, 11.0]
    assert "3 of 5 classes carried over by name" in carry.summary()


def test_carry_class_head_unknown_names_and_width_mismatch() -> None:
    fresh = {CLASS_HEAD + "weight": torch.zeros(4, 4), CLASS_HEAD + "bias": torch.zeros(4)}
    source = {CLASS_HEAD + "weight": torch.ones(4, 4), CLASS_HEAD + "bias": torch.ones(4)}
    head, carry = carry_class_head(fresh, source, ["a", "b", "c"], None)
    assert carry.mode == "by_index" and torch.equal(head[CLASS_HEAD + "weight"], torch.ones(4, 4))
    head, carry = carry_class_head(fresh, {k: v[:3] for k, v in source.items()}, ["a", "b", "c"], None)
    assert carry.mode == "none" and carry.initialised == ["a", "b", "c"]
    assert torch.equal(head[CLASS_HEAD + "weight"][-1], torch.ones(4)) and head[CLASS_HEAD + "weight"][0].sum() == 0
    with pytest.raises(ValueError, match="differ in width"):
        carry_class_head(
            fresh, {CLASS_HEAD + "weight": torch.ones(4, 5), CLASS_HEAD + "bias": torch.ones(4)}, "abc", None
        )


@pytest.fixture(scope="module")
def source_model() -> torch.nn.Module:
    return _random(build_model(get_preset("faseg_tiny", ["num_classes=10"])), 3)


def _check_loaded(model: torch.nn.Module, source: torch.nn.Module) -> None:
    own, src = model.state_dict(), source.state_dict()
    for key, value in own.items():
        if not key.startswith(CLASS_HEAD):
            assert torch.equal(value, src[key]), key
    w, sw = own[CLASS_HEAD + "weight"], src[CLASS_HEAD + "weight"]
    assert (
        torch.equal(w[0], sw[2])
        and torch.equal(w[2], sw[0])
        and torch.equal(w[4], sw[6])
        and torch.equal(w[-1], sw[-1])
    )
    assert not torch.equal(w[1], sw[1])


def test_init_from_faseg_directory_carries_shared_classes(tmp_path: Path, source_model) -> None:
    directory = save_pretrained(source_model, tmp_path / "ckpt", classes=SOURCE_CLASSES)
    assert detect_format(directory) == "faseg"
    model = build_model(get_preset("faseg_tiny", [f"num_classes={len(TARGET_CLASSES)}"]))
    report = init_model(model, str(directory), TARGET_CLASSES)
    _check_loaded(model, source_model)
    doc = report.to_dict()
    assert doc["source_format"] == "faseg" and doc["class_head"]["carried"] == {
        "Road": "road",
        "sky": "sky",
        "tree": "tree",
    }
    assert "no-object row carried" in report.format()


def test_init_from_official_detectron2_file(tmp_path: Path, source_model) -> None:
    path = save_detectron2(source_model, tmp_path / "official.pkl")
    assert detect_format(path) == "detectron2"
    # Official files name no classes: with the same count the rows carry over by index.
    model = build_model(get_preset("faseg_tiny", ["num_classes=10"]))
    report = init_model(model, str(path), [f"c{i}" for i in range(10)])
    assert report.source_format == "detectron2" and report.class_head.mode == "by_index"
    for key, value in model.state_dict().items():
        assert torch.equal(value, source_model.state_dict()[key]), key


def test_init_from_detectron2_backbone_file(tmp_path: Path, source_model) -> None:
    """An ImageNet backbone in detectron2's layout (``R-50.pkl`` style): the backbone loads, the rest is fresh."""
    official = to_detectron2_state_dict(source_model, include_criterion=False)
    backbone = {k.removeprefix("backbone."): v.numpy() for k, v in official.items() if k.startswith("backbone.")}
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"model": backbone, "__author__": "test"}))
    model = build_model(get_preset("faseg_tiny", ["num_classes=3"]))
    report = init_model(model, str(path), ["a", "b", "c"])
    assert report.source_format == "detectron2" and report.class_head.mode == "none"
    assert report.class_head.initialised == ["a", "b", "c"] and "none in the checkpoint" in report.format()
    src = source_model.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, src[key]), key
    assert report.loaded == len([k for k in model.state_dict() if k.startswith("backbone.")]), report.loaded
    assert not torch.equal(model.state_dict()[CLASS_HEAD + "weight"][:3], src[CLASS_HEAD + "weight"][:3])


def test_init_errors_name_the_problem(tmp_path: Path, source_model) -> None:
    with pytest.raises(CheckpointError, match="expected a faseg checkpoint directory"):
        init_model(build_model(get_preset("faseg_tiny")), str(tmp_path / "nothing"), ["a"])
    directory = save_pretrained(source_model, tmp_path / "ckpt", classes=SOURCE_CLASSES)
    other = build_model(get_preset("faseg_tiny", ["decoder.dim_feedforward=128", "num_classes=10"]))
    with pytest.raises(CheckpointError, match="do not fit"):
        init_model(other, str(directory), SOURCE_CLASSES)


def test_init_from_hugging_face_directory_carries_classes_by_name(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(
            out_features=["stage1", "stage2", "stage3", "stage4"],
            embed_dim=32,
            depths=[1, 1, 2, 1],
            num_heads=[1, 2, 2, 4],
            window_size=4,
        ),
        id2label={i: name for i, name in enumerate(["wall", "Sky", "person", "road"])},
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        encoder_layers=2,
        decoder_layers=4,
        num_attention_heads=4,
        dim_feedforward=128,
        num_queries=10,
    )
    transformers.Mask2FormerForUniversalSegmentation(hf_config).save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    reference = convert_hf(tmp_path / "hf").model  # the same weights through `faseg convert`
    model = build_model(dataclasses.replace(reference.cfg, num_classes=3))
    report = init_model(model, str(tmp_path / "hf"), ["road", "tree", "sky"])
    assert report.source_format == "hf"
    assert report.class_head.carried == {"road": "road", "sky": "Sky"} and report.class_head.initialised == ["tree"]
    own, ref = model.state_dict(), reference.state_dict()
    for key, value in own.items():
        if not key.startswith(CLASS_HEAD):
            assert torch.equal(value, ref[key]), key
    w, rw = own[CLASS_HEAD + "weight"], ref[CLASS_HEAD + "weight"]
    assert torch.equal(w[0], rw[3]) and torch.equal(w[2], rw[1]) and torch.equal(w[-1], rw[-1])
