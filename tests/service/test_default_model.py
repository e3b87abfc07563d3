"""The vertical slice: `python -m faseg.service` with no model exports the shipped demo checkpoint to ONNX,
serves it on ONNX Runtime CPU, and answers a real photograph (scikit-image's sample images)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from faseg.model.checkpoint import read_checkpoint_info
from faseg.model.demo import demo_checkpoint_dir
from PIL import Image
from service_server import ServerProcess

skimage_data = pytest.importorskip("skimage.data")


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_no_model_serves_the_demo_model_and_answers_a_photograph(tmp_path: Path) -> None:
    info = read_checkpoint_info(demo_checkpoint_dir())
    server = ServerProcess(["--cache-dir", str(tmp_path / "cache"), "--log-level", "warning"], tmp_path / "log")
    try:
        server.start(wait_ready=False)
        server.wait_ready(timeout_s=180)  # first start exports the demo model
        exported = list((tmp_path / "cache").glob("demo-*.onnx"))
        assert len(exported) == 1
        models = httpx.get(server.url + "/v1/models", timeout=10).json()
        assert info.classes[0] in str(models)
        photo = skimage_data.astronaut()  # 512×512 RGB photograph
        response = httpx.post(
            server.url + "/v1/segment?outputs=stats,png",
            content=_jpeg(photo),
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["image"]["width"], body["image"]["height"]) == (512, 512)
        assert body["backend"] == "onnxruntime"
        fractions = [entry["fraction"] for entry in body["stats"]]
        assert fractions and abs(sum(fractions) - 1.0) < 1e-6
        assert {entry["name"] for entry in body["stats"]} <= set(info.classes)
    finally:
        server.stop()
