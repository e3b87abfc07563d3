"""Fixtures for the load-test and benchmark tests: the service tests' toy ONNX model and a live server."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from faseg.bench.service_bench import ServerProcess

SERVICE_TESTS = Path(__file__).resolve().parents[1] / "service"


def _toy_model_module():
    """tests/service/service_toy_model.py, loaded by path (the service tests import it as a top-level
    module from their own folder)."""
    spec = importlib.util.spec_from_file_location("service_toy_model", SERVICE_TESTS / "service_toy_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _toy_model_module().export_toy_onnx(tmp_path_factory.mktemp("model") / "toy.onnx")


@pytest.fixture(scope="session")
def live_server(toy_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server on the toy model, on a free loopback port, for the whole session."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    server = ServerProcess(toy_onnx, ["--decode-threads", "2", "--encode-threads", "2"], log_path=log)
    with server:
        yield server
