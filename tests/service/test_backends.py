"""Backends against the serving contract, with the toy model (in-process)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from faseg.export.session import SessionError, choose_providers
from faseg.service.backends import BackendError, load_backend
from faseg.service.backends.base import ModelInfo, check_output
from faseg.service.backends.onnxruntime import OnnxRuntimeBackend
from faseg.service.backends.torch import TorchBackend
from faseg.service.core.config import Settings
from service_toy_model import CLASSES, INPUT_SIZE, PALETTE, ColourClassifier, reference_labels

TOY_INFO = ModelInfo(name="toy", classes=tuple(CLASSES), palette=tuple(map(tuple, PALETTE)), input_size=INPUT_SIZE)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *INPUT_SIZE, 3), dtype=np.uint8)


def test_onnxruntime_backend_reads_metadata_and_infers(toy_onnx: Path) -> None:
    backend = load_backend(Settings(model=toy_onnx, max_batch_size=4).effective())
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.model_name == "toy" and backend.input_size == INPUT_SIZE
    assert backend.classes == tuple(CLASSES) and backend.palette == tuple(map(tuple, PALETTE))
    assert backend.info.flavour == "portable" and backend.details()["providers"] == ["CPUExecutionProvider"]
    images = _batch(3)
    out = backend.infer(images)
    check_output(out, images, backend.info)
    for i in range(3):
        np.testing.assert_array_equal(out.labels[i], reference_labels(images[i]))
    backend.warmup([1, 2, 4])


def test_torch_backend_matches_onnxruntime(toy_onnx: Path) -> None:
    torch_backend = TorchBackend.load(
        toy_onnx.parent, model_name="toy", loader=lambda _path: (ColourClassifier(), TOY_INFO), max_batch_size=4
    )
    ort_backend = OnnxRuntimeBackend.load(toy_onnx, model_name="toy")
    images = _batch(4, seed=1)
    a, b = torch_backend.infer(images), ort_backend.infer(images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-5)
    assert torch_backend.classes == tuple(CLASSES)
    torch_backend.warmup([1, 3])


def test_torch_backend_bf16_autocast_on_cpu() -> None:
    backend = TorchBackend(ColourClassifier(), TOY_INFO, precision="bf16")
    out = backend.infer(_batch(2))
    assert out.labels.dtype == np.uint8 and out.confidence.dtype == np.float32


def test_torch_backend_uint16_labels_past_256_classes() -> None:
    classes = tuple(f"c{i}" for i in range(300))
    info = ModelInfo(name="big", classes=classes, palette=(), input_size=(32, 32))

    class Constant(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n, h, w, _ = images.shape
            return torch.full((n, h, w), 299, dtype=torch.int64), torch.ones((n, h, w))

    out = TorchBackend(Constant(), info).infer(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    assert out.labels.dtype == np.uint16 and int(out.labels.max()) == 299


def test_missing_metadata_is_a_clear_error(toy_onnx: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(toy_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(BackendError, match=r"faseg\.classes"):
        OnnxRuntimeBackend.load(bare, model_name="bare")
    with pytest.raises(BackendError, match="does not exist"):
        OnnxRuntimeBackend.load(tmp_path / "absent.onnx", model_name="x")
    not_onnx = tmp_path / "junk.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(BackendError):
        OnnxRuntimeBackend.load(not_onnx, model_name="x")


def test_cuda_without_gpu_providers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"], trt_cache_dir=tmp_path, precision="fp32")
    providers = choose_providers(
        "cuda",
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        trt_cache_dir=tmp_path,
        precision="fp16",
    )
    assert [p if isinstance(p, str) else p[0] for p in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert providers[0][1]["trt_fp16_enable"] is True  # type: ignore[index]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_tensorrt_absent_is_a_clear_error(tmp_path: Path) -> None:
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"\0")
    settings = Settings(model=engine, device="cuda").effective()
    with pytest.raises(BackendError, match="TensorRT"):
        load_backend(settings)


def test_torch_backend_loads_a_checkpoint_directory_with_the_model_loader() -> None:
    """`--backend torch --model DIR`: the default loader is faseg.model.load_serving_module."""
    from faseg.model.checkpoint import read_checkpoint_info
    from faseg.model.demo import demo_checkpoint_dir
    from faseg.service.backends.torch import TorchBackend

    info = read_checkpoint_info(demo_checkpoint_dir())
    backend = TorchBackend.load(demo_checkpoint_dir(), model_name="demo")
    h, w = info.input_size
    images = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    out = backend.infer(images)
    assert backend.input_size == (h, w) and list(backend.classes) == info.classes
    assert out.labels.shape == (2, h, w) and out.labels.dtype == np.uint8
    assert out.confidence.shape == (2, h, w) and out.confidence.dtype == np.float32
    assert int(out.labels.max()) < len(info.classes)


def test_onnxruntime_backend_reports_an_fp16_file(tmp_path: Path) -> None:
    """A mixed fp16 export (faseg export onnx --precision fp16) is served as fp16 whatever the setting, and
    runs on the CPU provider (ONNX Runtime widens what it has no fp16 kernels for) with the fp32 file's labels
    on almost every pixel."""
    from faseg.export.onnx_export import ExportOptions, export_checkpoint
    from faseg.model.demo import demo_checkpoint_dir

    files = {}
    for precision in ("fp32", "fp16"):
        files[precision] = tmp_path / f"demo_{precision}.onnx"
        export_checkpoint(demo_checkpoint_dir(), files[precision], ExportOptions(precision=precision))
    half = OnnxRuntimeBackend.load(files["fp16"], model_name="demo16", max_batch_size=2)
    full = OnnxRuntimeBackend.load(files["fp32"], model_name="demo32", max_batch_size=2)
    assert half.precision == "fp16" and full.precision == "fp32"
    h, w = half.input_size
    images = np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    a, b = half.infer(images), full.infer(images)
    check_output(a, images, half.info)
    assert (a.labels == b.labels).mean() > 0.99
