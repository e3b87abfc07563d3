"""`faseg verify`: report shape, tolerances and exit codes, on the tiny model exported once (portable)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="faseg verify needs onnx: pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="faseg verify needs onnxruntime: pip install onnxruntime")
pytest.importorskip("skimage", reason="faseg verify needs scikit-image for its sample photos")

from faseg.export import tensorrt_verify
from faseg.export.onnx_export import ExportOptions, export_checkpoint
from faseg.export.verify import (
    TOLERANCES,
    VerifyError,
    compare,
    default_checkpoint,
    letterbox,
    verification_images,
    verify,
)
from faseg.model import build_model, get_preset
from faseg.model.checkpoint import save_pretrained

from faseg.cli import main

RUNTIME_KEYS = {"label_agreement", "logits_max_abs", "logits_max_rel"}


def _save(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_pretrained(build_model(get_preset("faseg_tiny")), directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return _save(root / "a", 0), _save(root / "b", 1)


@pytest.fixture(scope="module")
def onnx_file(checkpoints, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_checkpoint(checkpoints[0], out, ExportOptions(outputs="labels,confidence,logits"))
    return out


def test_verify_json_passes(checkpoints, onnx_file: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["verify", "--checkpoint", str(checkpoints[0]), "--onnx", str(onnx_file), "--json", "--batch-size", "3"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    assert report["images"][:3] == ["astronaut", "coffee", "chelsea"] and len(report["images"]) == 6
    ort = report["onnxruntime"]
    assert ort["status"] == "ok" and set(ort) >= RUNTIME_KEYS
    assert ort["label_agreement"] >= 0.999 and ort["logits_max_abs"] <= 1e-3
    assert ort["details"]["providers"] == ["CPUExecutionProvider"]
    trt = report["tensorrt"]
    if tensorrt_verify.unavailable_reason() is not None:
        assert trt["status"].startswith("unavailable: ")
    assert report["tolerances"] == {
        "label_agreement": 0.999,
        "logits_max_abs": 1e-3,
        "confidence_max_abs": 1e-3,
        "logits_median_abs": None,
    }


def test_verify_fails_when_a_tolerance_is_missed(checkpoints, onnx_file: Path, capsys) -> None:
    """The file of checkpoint A against the weights of checkpoint B: labels and logits disagree -> exit 1."""
    argv = ["verify", "--checkpoint", str(checkpoints[1]), "--onnx", str(onnx_file), "--json", "--random", "0"]
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    assert report["onnxruntime"]["status"] == "failed"
    assert any("logits_max_abs" in f for f in report["onnxruntime"]["failures"])
    # a miss comes with torch's own noise floor (another thread count), which is far below this miss
    spread = report["torch"]["spread"]
    assert len(spread["threads"]) == 2 and spread["threads"][0] != spread["threads"][1]
    assert spread["logits_max_abs"] < 1e-3 < report["onnxruntime"]["logits_max_abs"]


@pytest.mark.parametrize("flavour", ["portable", "plugin"])
def test_shipped_demo_model_passes_at_batch_1_and_4(flavour: str, tmp_path: Path) -> None:
    """The trained demo weights (not only random ones) at their input size, one file run at batch 1 and 4,
    against the per-image torch reference: the issue's bar (logits ≤ 1e-3, labels ≥ 99.9%). Before masked
    attention compared logits with logit(0.15) and the reference ran per image, this measured 0.25 (a mask
    decision 2.4e-5 from the threshold, flipped by torch's batch-size-dependent kernels)."""
    from faseg.export import custom_ops

    if flavour == "plugin" and custom_ops.ort_custom_ops_library() is None:
        reason = custom_ops.missing_library_message()
        if os.environ.get("FASEG_REQUIRE_CUSTOM_OPS") == "1":
            pytest.fail(f"{reason} (FASEG_REQUIRE_CUSTOM_OPS=1)", pytrace=False)
        pytest.skip(reason)
    out = tmp_path / f"demo_{flavour}.onnx"
    export_checkpoint(default_checkpoint(), out, ExportOptions(flavour=flavour, outputs="labels,confidence,logits"))
    for batch_size in (1, 4):
        report = verify(out, batch_size=batch_size, tensorrt="off")
        ort = report["onnxruntime"]
        assert report["passed"], (batch_size, ort)
        assert ort["label_agreement"] >= 0.999 and ort["logits_max_abs"] <= 1e-3
        assert report["torch"]["batch_size"] == 1 and "spread" not in report["torch"]


def test_requested_engine_that_cannot_run_fails(checkpoints, onnx_file: Path, tmp_path: Path) -> None:
    if tensorrt_verify.unavailable_reason() is None:
        pytest.skip("TensorRT is available here; this checks the unavailable path")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    report = verify(onnx_file, checkpoints[0], engine=engine, photos=("astronaut",), n_random=0)
    assert report["onnxruntime"]["status"] == "ok"
    assert report["tensorrt"]["status"].startswith("unavailable: ")
    assert report["passed"] is False


def test_missing_demo_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, onnx_file: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "faseg.model.demo", None)  # import fails as if not shipped
    with pytest.raises(VerifyError, match="pass --checkpoint DIR"):
        default_checkpoint()
    assert main(["verify", "--onnx", str(onnx_file)]) == 2
    assert "bundled demo model" in capsys.readouterr().err


def test_missing_onnx_file(checkpoints, tmp_path: Path, capsys) -> None:
    assert main(["verify", "--checkpoint", str(checkpoints[0]), "--onnx", str(tmp_path / "nope.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compare_measures_and_gates() -> None:
    rng = np.random.default_rng(0)
    ref = {
        "labels": rng.integers(0, 5, (2, 8, 8)).astype(np.uint8),
        "confidence": rng.random((2, 8, 8)).astype(np.float32),
        "pred_logits": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "pred_masks": rng.standard_normal((2, 3, 2, 2)).astype(np.float32),
    }
    exact = compare(ref, {k: v.copy() for k, v in ref.items()}, TOLERANCES["fp32"])
    assert exact.status == "ok" and exact.label_agreement == 1.0 and exact.logits_max_abs == 0.0
    off = {k: v.copy() for k, v in ref.items()}
    off["labels"][0, 0, :2] += 1  # 2 of 128 pixels
    off["pred_masks"][0, 0, 0, 0] += 0.01
    result = compare(ref, off, TOLERANCES["fp32"])
    assert result.status == "failed" and result.label_agreement == pytest.approx(126 / 128)
    assert result.logits_max_abs == pytest.approx(0.01, rel=1e-3)
    assert len(result.failures) == 2
    no_logits = compare(ref, {"labels": ref["labels"], "confidence": ref["confidence"]}, TOLERANCES["fp32"])
    assert no_logits.status == "ok" and no_logits.logits_max_abs is None
    nan = {**ref, "pred_logits": np.full_like(ref["pred_logits"], np.nan)}
    assert compare(ref, nan, TOLERANCES["fp32"]).status == "failed"


def test_letterbox_and_images() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    boxed = letterbox(image, (64, 64))
    assert boxed.shape == (64, 64, 3)
    assert boxed[:32].min() == 255 and boxed[32:].max() == 0  # top-left, aspect kept, black below
    names, batch = verification_images((64, 96), photos=("astronaut", "coffee"), n_random=2)
    assert names == ["astronaut", "coffee", "random_noise_0", "random_blobs_1"]
    assert batch.shape == (4, 64, 96, 3) and batch.dtype == np.uint8


def test_tensorrt_module_imports_without_tensorrt() -> None:
    reason = tensorrt_verify.unavailable_reason()
    assert reason is None or isinstance(reason, str)
    if reason is not None:
        with pytest.raises(tensorrt_verify.TensorRTUnavailable):
            tensorrt_verify.TensorRTRunner(onnx_path=Path("x.onnx"))
