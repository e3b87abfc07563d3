"""The app factory with an injected backend, in-process (Starlette's TestClient runs the lifespan)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faseg.service import Settings, create_app
from faseg.service.backends.base import Backend, BackendOutput, ModelInfo
from faseg.service.backends.torch import TorchBackend
from fastapi.testclient import TestClient
from service_images import blocks_image, encode
from service_server import free_port
from service_toy_model import CLASSES, INPUT_SIZE, PALETTE, ColourClassifier

INFO = ModelInfo(name="toy-torch", classes=tuple(CLASSES), palette=tuple(map(tuple, PALETTE)), input_size=INPUT_SIZE)


class BrokenBackend(Backend):
    """Warms up fine, then fails every real request."""

    name = "broken"

    def __init__(self) -> None:
        super().__init__(INFO, device="cpu", max_batch_size=2)
        self.calls = 0

    def infer(self, images: np.ndarray) -> BackendOutput:
        self.calls += 1
        if self.calls > 2:  # the warm-up runs batch sizes 1 and 2
            raise RuntimeError("kernel exploded")
        shape = images.shape[:3]
        return BackendOutput(np.zeros(shape, np.uint8), np.ones(shape, np.float32))


def _client(backend: Backend) -> TestClient:
    return TestClient(create_app(Settings(max_batch_size=2, warmup=True), backend=backend))


def _wait_ready(client: TestClient) -> None:
    for _ in range(500):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("never ready")


def test_torch_backend_served_in_process() -> None:
    backend = TorchBackend(ColourClassifier(), INFO, max_batch_size=2)
    with _client(backend) as client:
        _wait_ready(client)
        response = client.post("/v1/segment?outputs=stats", content=encode(blocks_image(), "PNG"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["backend"] == "torch" and body["model"] == "toy-torch"
        assert sorted(s["id"] for s in body["stats"]) == list(range(6))


def test_backend_failure_is_a_json_500_and_the_app_lives() -> None:
    with _client(BrokenBackend()) as client:
        _wait_ready(client)
        response = client.post("/v1/segment", content=encode(blocks_image(), "PNG"), headers={"X-Request-ID": "abc"})
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "INTERNAL" and response.headers["x-request-id"] == "abc"
        assert client.get("/readyz").status_code == 200


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "faseg.service", "--log-level", "warning", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_unusable_cache_dir_for_the_default_model_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    result = _run_module("--cache-dir", str(blocker / "cache"), "--port", str(free_port()))
    assert result.returncode == 2 and "cannot create the cache directory" in result.stderr


def test_invalid_settings_exit_2() -> None:
    result = _run_module("--model", "m.onnx", "--precision", "fp16")
    assert result.returncode == 2 and "fp16 needs device cuda" in result.stderr


def test_unloadable_model_fails_startup(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not an onnx model")
    result = _run_module("--model", str(model), "--port", str(free_port()))
    assert result.returncode == 1
    assert "cannot read ONNX model" in result.stderr + result.stdout


def test_route_dependencies_run_on_the_event_loop() -> None:
    """FastAPI runs a plain-``def`` dependency in its worker-thread pool: a thread hop per request that cost the
    segment routes about 1.8 ms of CPU each (benchmarks/results/2026-11-21_service_cpu_overhead.json)."""
    import inspect

    from fastapi.routing import APIRoute

    def calls(dependant):  # type: ignore[no-untyped-def]
        for dep in dependant.dependencies:
            yield dep.call
            yield from calls(dep)

    def api_routes(routes):  # type: ignore[no-untyped-def]
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            elif hasattr(route, "original_router"):  # an included router (FastAPI ≥ 0.16x wraps them)
                yield from api_routes(route.original_router.routes)

    routes = list(api_routes(create_app(Settings()).routes))
    assert any(r.path.endswith("/segment") for r in routes)
    sync = sorted(
        f"{route.path}: {call.__name__}"
        for route in routes
        for call in calls(route.dependant)
        if not inspect.iscoroutinefunction(call)
    )
    assert not sync


def test_create_app_resolves_the_default_model_in_the_lifespan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`create_app` does no heavy work: the demo model is resolved (exported on first use) when the app starts,
    and the settings the app reports are then the effective ones."""
    import faseg.service.main as service_main

    calls: list[Path] = []
    model = tmp_path / "toy.onnx"

    def resolve(cache_dir: Path | None = None) -> Path:
        calls.append(model)
        from service_toy_model import export_toy_onnx

        return export_toy_onnx(model)

    monkeypatch.setattr(service_main, "resolve_default_model", resolve)
    app = create_app(Settings(cache_dir=tmp_path, warmup=False))
    assert calls == [] and app.state.settings.model is None
    with TestClient(app) as client:
        assert calls == [model]
        assert app.state.settings.model == model and app.state.settings.model_name == "toy"
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        assert client.get("/v1/models").json()["models"][0]["name"] == "toy"
