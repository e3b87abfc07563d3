"""ONNX Runtime sessions on CPU must not spin-wait between runs: the service's decode, post-processing and
HTTP threads share those cores (benchmarks/ort_spinning.py measures the effect)."""

from __future__ import annotations

from pathlib import Path

from faseg.export.session import ALLOW_SPINNING_KEY
from faseg.service.backends import load_backend
from faseg.service.backends.onnxruntime import OnnxRuntimeBackend
from faseg.service.core.config import Settings


def test_cpu_sessions_do_not_spin(toy_onnx: Path) -> None:
    backend = load_backend(Settings(model=toy_onnx).effective())
    assert isinstance(backend, OnnxRuntimeBackend)
    options = backend.session.session.get_session_options()
    assert options.get_session_config_entry(ALLOW_SPINNING_KEY) == "0"
