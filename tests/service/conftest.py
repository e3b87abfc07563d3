"""Fixtures for the service tests: the toy ONNX model, test images and real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from service_images import blocks_image, encode
from service_server import BASE_ARGS, ServerFactory, ServerProcess
from service_toy_model import export_toy_onnx


@pytest.fixture(scope="session")
def toy_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_toy_onnx(tmp_path_factory.mktemp("model") / "toy.onnx")


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory, toy_onnx: Path) -> Iterator[ServerFactory]:
    """Start a server on the toy model with extra flags; every server is stopped at the end at the latest."""
    started: list[ServerProcess] = []

    def start(*args: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> ServerProcess:
        log = tmp_path_factory.mktemp("server") / "server.log"
        server = ServerProcess(["--model", str(toy_onnx), *BASE_ARGS, *args], log, env=env)
        started.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """Real photographs (scikit-image samples) in each accepted format, of different sizes."""
    import skimage.data

    astronaut = Image.fromarray(skimage.data.astronaut())  # 512x512
    coffee = Image.fromarray(skimage.data.coffee())  # 600x400
    chelsea = Image.fromarray(skimage.data.chelsea())  # 451x300
    rocket = Image.fromarray(skimage.data.rocket())  # 640x427
    return {
        "astronaut.jpg": encode(astronaut, "JPEG", quality=90),
        "coffee.png": encode(coffee, "PNG"),
        "chelsea.webp": encode(chelsea, "WEBP", quality=90),
        "rocket.jpg": encode(rocket, "JPEG", quality=85),
        "blocks.png": encode(blocks_image(), "PNG"),
    }


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client on the module's own ``server`` fixture."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client
