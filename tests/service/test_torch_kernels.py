"""The torch backend's ``--kernels`` setting: parsed like every setting, applied when the backend loads,
reported by ``GET /v1/models`` (``backend_details.kernels``: "fused" or "reference")."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
from faseg.model.ops import cuda_library, cuda_ops
from faseg.service import Settings, create_app
from faseg.service.backends.base import BackendError, ModelInfo
from faseg.service.backends.torch import TorchBackend
from faseg.service.cli import add_arguments, settings_from_args
from fastapi.testclient import TestClient
from pydantic import ValidationError
from service_toy_model import CLASSES, INPUT_SIZE, PALETTE, ColourClassifier

INFO = ModelInfo(name="toy-torch", classes=tuple(CLASSES), palette=tuple(map(tuple, PALETTE)), input_size=INPUT_SIZE)


@pytest.fixture(autouse=True)
def clean_dispatch():
    yield
    cuda_ops.disable_kernels()
    cuda_library.reset_cache()


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(list(argv)))


def test_kernels_flag_and_default() -> None:
    assert _parse().kernels == "auto"
    assert _parse("--kernels", "off").kernels == "off"
    with pytest.raises(SystemExit):
        _parse("--kernels", "fast")
    with pytest.raises(ValidationError, match="kernels"):
        Settings(kernels="fast")
    with pytest.raises(ValidationError, match="kernels 'on' applies to the torch backend only, not onnxruntime"):
        Settings(kernels="on", backend="onnxruntime")
    assert Settings(kernels="on", backend="torch", device="cuda").kernels == "on"


def test_kernels_on_without_cuda_refuses_to_load() -> None:
    with pytest.raises(BackendError, match="--kernels on: the fused CUDA kernels cannot run: no CUDA device"):
        TorchBackend(ColourClassifier(), INFO, kernels="on")


def test_models_reports_the_kernel_path() -> None:
    backend = TorchBackend(ColourClassifier(), INFO, max_batch_size=2)
    assert backend.kernels.path == "reference" and "no CUDA device" in backend.kernels.reason
    with TestClient(create_app(Settings(max_batch_size=2, kernels="auto"), backend=backend)) as client:
        for _ in range(500):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        [model] = client.get("/v1/models").json()["models"]
    assert model["backend_details"] == {"torch": torch.__version__, "kernels": "reference"}
    assert model["settings"]["kernels"] == "auto"
