"""Fixtures for the demo page's tests: one real server on the bundled demo model, the photographs the tests
upload, and the folder where the browser tests leave their screenshots."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from faseg.service.core.default_model import resolve_default_model
from PIL import Image

from faseg.bench.service_bench import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
# One cap for every test: above each sample photograph (< 60 KB) and the uploaded JPEG, below the "oversized"
# PNG, so one server answers both 200 and 413.
MAX_BODY_BYTES = 96 * 1024
SERVER_ARGS = (
    "--max-body-bytes", str(MAX_BODY_BYTES),
    "--max-batch-size", "1",  # one image at a time: the shortest warm-up
    "--decode-threads", "1",
    "--encode-threads", "1",
)  # fmt: skip
# FASEG_UI_ARTEFACTS moves the screenshots elsewhere (CI keeps them); runs/ is ignored by git.
ARTEFACTS_ENV = "FASEG_UI_ARTEFACTS"
DEFAULT_ARTEFACTS = ROOT / "runs" / "ui-tests"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m faseg.service`` serving the bundled demo model (exported to ONNX on first use)."""
    model = resolve_default_model(tmp_path_factory.mktemp("cache"))
    log = tmp_path_factory.mktemp("server") / "server.log"
    with ServerProcess(model, SERVER_ARGS, log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def api(demo_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.url, timeout=60) as client:
        yield client


def encode(pixels: np.ndarray, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photographs() -> dict[str, bytes]:
    """Uploads: a photograph under the server's byte cap, one over it, and a format the API refuses."""
    skimage_data = pytest.importorskip("skimage.data")
    rocket = skimage_data.rocket()  # 640×427, not among the page's samples
    files = {
        "rocket.jpg": encode(rocket, "JPEG", quality=80),
        "rocket-large.png": encode(rocket, "PNG"),
        "rocket.gif": encode(rocket[::4, ::4], "GIF"),
    }
    margin = 1024  # the multipart envelope
    assert len(files["rocket.jpg"]) + margin < MAX_BODY_BYTES < len(files["rocket-large.png"])
    assert len(files["rocket.gif"]) + margin < MAX_BODY_BYTES
    return files


@pytest.fixture(scope="session")
def artefacts() -> Path:
    folder = Path(os.environ.get(ARTEFACTS_ENV) or DEFAULT_ARTEFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
