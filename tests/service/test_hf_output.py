"""``outputs=hf``: the Hugging Face image-segmentation answer, read by huggingface_hub's own client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from faseg.service.imaging.encode import read_label_png
from service_server import ServerFactory, ServerProcess

huggingface_hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory()
    yield server
    server.stop()


def test_huggingface_client_reads_the_answer(server: ServerProcess, photos: dict[str, bytes]) -> None:
    data = photos["coffee.png"]
    client = huggingface_hub.InferenceClient(model=f"{server.url}/v1/segment?outputs=hf")
    segments = client.image_segmentation(data)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        labels = read_label_png(
            http.post("/v1/segment?outputs=png", content=data, headers={"Accept": "image/png"}).content
        )
        classes = [c["name"] for c in http.get("/v1/models").json()["models"][0]["classes"]]
    present = np.unique(labels).tolist()
    assert [s.label for s in segments] == [classes[i] for i in present]  # one entry per class present, in id order
    assert all(s.score is None for s in segments)  # semantic segmentation: no per-mask score
    covered = np.zeros(labels.shape, dtype=int)
    for segment, class_id in zip(segments, present, strict=True):
        mask = np.asarray(segment.mask)  # huggingface_hub decoded the base64 PNG into a PIL image
        assert segment.mask.mode == "L" and mask.shape == labels.shape
        np.testing.assert_array_equal(mask == 255, labels == class_id)
        covered += mask == 255
    assert (covered == 1).all()


def test_hf_output_in_the_native_answer_and_errors(server: ServerProcess, photos: dict[str, bytes]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        body = http.post("/v1/segment?outputs=stats,hf", content=photos["astronaut.jpg"]).json()
        assert [s["label"] for s in body["hf"]] == [c["name"] for c in body["stats"]]
        bad = http.post("/v1/segment?outputs=hf,nope", content=photos["astronaut.jpg"])
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "VALIDATION_ERROR"
