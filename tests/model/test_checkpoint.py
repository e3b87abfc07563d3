"""Our checkpoint format (model.safetensors + config.json): exact round trip and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    from_pretrained,
    read_checkpoint_info,
    save_pretrained,
)
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    cfg = get_preset("faseg_tiny", ["decoder.num_queries=12"])
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # no tensor left at an init constant (BN statistics, zero biases)
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=g)
                tensor.copy_(tensor.abs() + 0.5 if name.endswith("running_var") else tensor + 0.02 * noise)
    directory = tmp_path_factory.mktemp("ckpt") / "model"
    classes = [f"thing {i}" for i in range(cfg.num_classes)]
    palette = [(i, 2 * i, 3 * i) for i in range(cfg.num_classes)]
    save_pretrained(
        model, directory, classes=classes, palette=palette, input_size=(128, 256), metadata={"note": "round trip"}
    )
    return model, directory


def test_round_trip_is_exact(saved) -> None:
    model, directory = saved
    loaded = from_pretrained(directory)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    want, got = model.state_dict(), loaded.state_dict()
    assert list(want) == list(got)
    for key in want:
        assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
    info = loaded.checkpoint_info
    assert info.classes == [f"thing {i}" for i in range(8)]
    assert info.palette[3] == (3, 6, 9)
    assert info.input_size == (128, 256)
    assert info.metadata == {"note": "round trip"}
    images = torch.rand(1, 3, 128, 256, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.pred_logits, b.pred_logits) and torch.equal(a.pred_masks, b.pred_masks)


def test_saving_twice_gives_identical_files(saved, tmp_path: Path) -> None:
    directory = saved[1]
    loaded = from_pretrained(directory)
    info = loaded.checkpoint_info
    save_pretrained(
        loaded, tmp_path, classes=info.classes, palette=info.palette, input_size=info.input_size, metadata=info.metadata
    )
    assert (tmp_path / CONFIG_NAME).read_text() == (directory / CONFIG_NAME).read_text()
    a, b = load_file(str(tmp_path / WEIGHTS_NAME)), load_file(str(directory / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _copy(directory: Path, target: Path) -> Path:
    target.mkdir()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (target / name).write_bytes((directory / name).read_bytes())
    return target


def test_config_errors_name_the_problem(saved, tmp_path: Path) -> None:
    directory = saved[1]
    with pytest.raises(CheckpointError, match=r"not a checkpoint directory"):
        from_pretrained(tmp_path / "nope")
    bad = _copy(directory, tmp_path / "bad")
    document = json.loads((bad / CONFIG_NAME).read_text())

    (bad / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"not valid JSON"):
        from_pretrained(bad)
    (bad / CONFIG_NAME).write_text(json.dumps({**document, "format": "something-else"}))
    with pytest.raises(CheckpointError, match=r"not a faseg checkpoint config"):
        from_pretrained(bad)
    (bad / CONFIG_NAME).write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"format_version 99"):
        from_pretrained(bad)
    (bad / CONFIG_NAME).write_text(json.dumps({**document, "classes": document["classes"][:-1]}))
    with pytest.raises(CheckpointError, match=r"class-count mismatch"):
        read_checkpoint_info(bad)
    (bad / CONFIG_NAME).write_text(json.dumps({**document, "model": {**document["model"], "bogus": 1}}))
    with pytest.raises(CheckpointError, match=r"invalid model config.*bogus"):
        from_pretrained(bad)
    (bad / CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"missing"):
        from_pretrained(bad)


def test_weight_errors_name_the_problem(saved, tmp_path: Path) -> None:
    _, directory = saved
    bad = _copy(directory, tmp_path / "bad")
    weights = load_file(str(directory / WEIGHTS_NAME))

    (bad / WEIGHTS_NAME).write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file"):
        from_pretrained(bad)

    broken = dict(weights)
    del broken["sem_seg_head.predictor.query_feat.weight"]
    broken["extra.weight"] = torch.zeros(1)
    broken["sem_seg_head.predictor.class_embed.bias"] = torch.zeros(5)
    save_file(broken, str(bad / WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as info:
        from_pretrained(bad)
    message = str(info.value)
    assert "missing: sem_seg_head.predictor.query_feat.weight" in message
    assert "unexpected: extra.weight" in message
    assert "shape mismatch: sem_seg_head.predictor.class_embed.bias: checkpoint (5,) vs model (9,)" in message

    (bad / WEIGHTS_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing"):
        from_pretrained(bad)
