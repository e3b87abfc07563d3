"""Journeys (b) and (c) of the README, end to end through the `faseg` CLI:

(b) an official detectron2 FASeg checkpoint (random weights in the official key layout, the tiny config) →
    `faseg convert`, and directly `faseg train --init FILE` → `faseg eval` → `faseg export onnx` in both
    flavours → `faseg verify` → `faseg serve`;
(c) fine-tuning the demo model on a `folder:` dataset whose classes overlap its own → the class-head rows of
    the shared classes carried over by name (OUT/init_report.json) → a crash and `--resume` → export → serve
    with the new class names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from faseg.export.custom_ops import missing_library_message, ort_custom_ops_library
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import read_checkpoint_info
from faseg.model.convert import save_detectron2
from faseg.model.demo import demo_checkpoint_dir
from journey_cli import Served, faseg, folder_dataset, photo, train_args

SIZE = 192  # the smallest square input the tiny preset's HRCA accepts (S0 // 32 ≥ 1 window)


def _plugin_flavour_available() -> None:
    if ort_custom_ops_library() is None:
        reason = missing_library_message()
        if os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1":
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)


def _official_checkpoint(path: Path, num_classes: int) -> Path:
    """An official-layout FASeg checkpoint (detectron2 names, pickled numpy arrays) with random weights."""
    model = build_model(get_preset("faseg_tiny", [f"num_classes={num_classes}"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=g) * 0.02
                tensor.copy_(tensor.abs() + 0.5 if name.endswith("running_var") else tensor + noise)
    return save_detectron2(model, path)


def test_official_checkpoint_to_served_model(tmp_path: Path) -> None:
    _plugin_flavour_available()
    official = _official_checkpoint(tmp_path / "faseg_tiny_official.pkl", num_classes=10)
    data = folder_dataset(tmp_path / "data", ["sky", "road", "building"], size=SIZE)
    names = ",".join(f"thing{i}" for i in range(10))

    convert = ["convert", "--from", "detectron2", str(official), "--out", "ckpt", "--preset", "faseg_tiny"]
    printed = faseg(*convert, "--set", "num_classes=10", "--classes", names, cwd=tmp_path)
    assert "result: exact" in printed
    assert read_checkpoint_info(tmp_path / "ckpt").classes == names.split(",")

    train = train_args(data, tmp_path / "run", 2, SIZE)
    faseg("train", "--preset", "faseg_tiny", "--init", str(official), *train, cwd=tmp_path)
    init = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert init["source_format"] == "detectron2" and init["loaded"] > 300
    assert init["class_head"]["initialised"] == ["sky", "road", "building"]  # official files name no classes
    final = tmp_path / "run" / "final"

    metrics = json.loads(faseg("eval", "--checkpoint", str(final), "--data", f"folder:{data}", "--json", cwd=tmp_path))
    assert metrics["num_images"] == 4 and 0.0 <= metrics["miou"] <= 1.0

    size = f"{SIZE}x{SIZE}"
    faseg("export", "onnx", "--checkpoint", str(final), "--out", "model.onnx", "--size", size, cwd=tmp_path)
    faseg(
        "export", "onnx", "--checkpoint", str(final), "--out", "model_plugin.onnx", "--size", size,
        "--flavour", "plugin", cwd=tmp_path,
    )  # fmt: skip
    for onnx in ("model.onnx", "model_plugin.onnx"):
        report = json.loads(faseg("verify", "--checkpoint", str(final), "--onnx", onnx, "--json", cwd=tmp_path))
        assert report["passed"], (onnx, report["onnxruntime"].get("failures"))

    server = Served("--model", "model_plugin.onnx", cwd=tmp_path)
    try:
        assert server.classes() == ["sky", "road", "building"]
        answer = httpx.post(server.url + "/v1/segment?outputs=stats", content=photo("coffee"), timeout=60)
        assert answer.status_code == 200
        assert {c["name"] for c in answer.json()["stats"]} <= {"sky", "road", "building"}
    finally:
        server.stop()


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, "training ended before its first periodic checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.05)


def test_fine_tune_on_overlapping_classes_resume_export_serve(tmp_path: Path) -> None:
    classes = ["sky", "road", "building", "tree"]  # the demo model has sky, road and tree (and 7 others)
    data = folder_dataset(tmp_path / "data", classes, size=SIZE)
    run = tmp_path / "run"
    args = ["train", "--preset", "faseg_tiny", "--init", str(demo_checkpoint_dir()), *train_args(data, run, 6, SIZE)]
    args += ["--checkpoint-period", "1"]

    # A crash mid-run (SIGKILL once the first periodic checkpoint is written) ...
    crashed = subprocess.Popen([sys.executable, "-m", "faseg", *args], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        _wait_for(run / "last", crashed)
        crashed.send_signal(signal.SIGKILL)
    finally:
        _, stderr = crashed.communicate(timeout=60)
    assert b"3 of 4 classes carried over by name" in stderr, stderr.decode()[-3000:]
    report = json.loads((run / "init_report.json").read_text())
    assert report["class_head"]["carried"] == {"sky": "sky", "road": "road", "tree": "tree"}
    assert report["class_head"]["initialised"] == ["building"] and report["class_head"]["no_object_carried"]
    assert not (run / "final").exists()

    # ... and `--resume` finishes it from the last checkpoint.
    summary = json.loads(faseg(*args, "--resume", cwd=tmp_path))
    assert summary["iteration"] == 6 and not summary["stopped_early"]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    iterations = [s["iteration"] for s in steps if s.get("type") == "train"]
    assert iterations and iterations[-1] == 6

    final = run / "final"
    info = read_checkpoint_info(final)
    assert info.classes == classes
    assert info.metadata["init"]["class_head"]["carried"] == report["class_head"]["carried"]  # also after the resume
    faseg("export", "onnx", "--checkpoint", str(final), "--out", "tuned.onnx", "--size", f"{SIZE}x{SIZE}", cwd=tmp_path)
    server = Served("--model", "tuned.onnx", cwd=tmp_path)
    try:
        assert server.classes() == classes
        answer = httpx.post(server.url + "/v1/segment?outputs=hf", content=photo("astronaut"), timeout=60)
        assert answer.status_code == 200 and {s["label"] for s in answer.json()} <= set(classes)
    finally:
        server.stop()
