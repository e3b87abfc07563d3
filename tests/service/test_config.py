"""Settings: environment, flags over environment, validation, derived values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from faseg.service.cli import add_arguments, settings_from_args
from faseg.service.core.config import Settings
from faseg.service.core.default_model import DefaultModelUnavailable, resolve_default_model
from faseg.service.main import effective_settings
from pydantic import ValidationError


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.device, s.backend, s.model) == ("127.0.0.1", 8000, "cpu", None, None)
    assert s.max_batch_size == 8 and s.max_queue_size == 64 and s.default_timeout_ms == 10_000


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASEG_PORT", "9001")
    monkeypatch.setenv("FASEG_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("FASEG_WARMUP", "false")
    assert _parse().port == 9001
    s = _parse("--port", "9100", "--warmup")
    assert (s.port, s.max_batch_size, s.warmup) == (9100, 4, True)


def test_flags_cover_every_setting() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {a.dest for a in parser._actions if a.dest != "help"}
    assert flags == set(Settings.model_fields)
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"precision": "fp16"},  # fp16 on cpu
        {"model": Path("m.onnx"), "backend": "torch"},
        {"backend": "tensorrt"},  # needs cuda
        {"max_batch_size": 0},
        {"max_queue_size": 8, "limit_concurrency": 8},
        {"max_image_pixels": 10**9},
        {"model": Path("weights.bin")},
        {"model_name": "bad name/with slash"},
        {"instances": 0},
        {"backend": "tensorrt", "device": "cuda", "instances": 2},  # one execution context
    ],
)
def test_unsafe_values_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**kwargs)


def test_effective_fills_derived_values(tmp_path: Path) -> None:
    s = Settings(model=tmp_path / "my model.onnx").effective()
    assert s.backend == "onnxruntime" and s.model_name == "my-model" and s.max_queue_delay_ms == 0.0
    s = Settings(model=tmp_path / "engine.plan", device="cuda").effective()
    assert s.backend == "tensorrt" and s.max_queue_delay_ms == 2.0
    assert Settings(model=tmp_path).effective().backend == "torch"


def _fake_demo(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    import faseg.model.demo

    monkeypatch.setattr(faseg.model.demo, "demo_checkpoint_dir", lambda: directory)


def test_missing_demo_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_demo(monkeypatch, tmp_path / "nowhere")
    with pytest.raises(DefaultModelUnavailable, match="demo model is missing"):
        resolve_default_model(tmp_path / "cache")
    with pytest.raises(DefaultModelUnavailable):
        effective_settings(Settings(cache_dir=tmp_path / "cache"))


def test_default_model_is_exported_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    import torch
    from faseg.model import build_model, get_preset
    from faseg.model.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = build_model(get_preset("faseg_tiny", ["decoder.dec_layers=5"]))
    save_pretrained(model, tmp_path / "demo", input_size=(192, 192))  # S0 = 36 → HRCA k = 1
    _fake_demo(monkeypatch, tmp_path / "demo")
    first = resolve_default_model(tmp_path / "cache")
    assert first.parent == tmp_path / "cache" and first.name.startswith("demo-") and first.suffix == ".onnx"
    meta = {p.key: p.value for p in onnx.load(first).metadata_props}
    assert meta["faseg.input_size"] == "[192, 192]"
    stamp = first.stat().st_mtime_ns
    assert resolve_default_model(tmp_path / "cache") == first  # cached: not exported again
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temporary left behind


def test_instances_share_the_cpu_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several instances on cpu: each run gets cores // instances intra-op threads unless set explicitly."""
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert Settings(instances=2).effective().intra_op_threads == 4
    assert Settings(instances=3).effective().intra_op_threads == 2
    assert Settings(instances=16).effective().intra_op_threads == 1
    assert Settings(instances=2, intra_op_threads=3).effective().intra_op_threads == 3
    assert Settings().effective().intra_op_threads == 0  # one instance: the library's default
    assert Settings(instances=2, device="cuda").effective().intra_op_threads == 0
