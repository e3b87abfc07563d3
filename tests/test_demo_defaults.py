"""Without --checkpoint, every subcommand that takes one uses the bundled demo model (README, "The demo model")."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from faseg.cli import build_parser, main
from faseg.commands import COMMAND_MODULES


def test_no_subcommand_requires_a_checkpoint() -> None:
    """--checkpoint is optional wherever it appears (the demo model is the default)."""
    parser = build_parser()

    def walk(p, path):
        for action in p._actions:
            if getattr(action, "choices", None) and isinstance(action.choices, dict):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif "--checkpoint" in action.option_strings:
                yield " ".join(path), action.required

    found = dict(walk(parser, []))
    assert {"eval", "verify", "export onnx", "bench model", "bench service"} <= set(found)
    assert not [name for name, required in found.items() if required]
    assert len(COMMAND_MODULES) >= 10


def test_export_onnx_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "onnx", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert Path(result["path"]) == out and result["input_size"] == [256, 256]
    metadata = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert json.loads(metadata["faseg.classes"])[0] == "sky"  # the demo model's classes


def test_bench_model_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "model", "--backends", "onnxruntime", "--batch", "1", "--runs", "1", "--warmup", "0"]
    assert main([*argv, "--size", "192x192", "--workdir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fastest"]["1"]["backend"] == "onnxruntime"
