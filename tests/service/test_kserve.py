"""KServe v2 / Open Inference Protocol: tritonclient against a real server, JSON and binary data."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from faseg.service.imaging.encode import read_label_png
from service_server import ServerFactory, ServerProcess

triton_http = pytest.importorskip("tritonclient.http")
MODEL = "toy"


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory("--max-queue-delay-ms", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def triton(server: ServerProcess) -> Iterator[object]:
    client = triton_http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    yield client
    client.close()


def _v1_png_labels(client: httpx.Client, data: bytes) -> np.ndarray:
    response = client.post("/v1/segment?outputs=png", content=data, headers={"Accept": "image/png"})
    assert response.status_code == 200
    return read_label_png(response.content)


def test_health_and_metadata(triton: object) -> None:
    assert triton.is_server_live() and triton.is_server_ready()  # type: ignore[attr-defined]
    assert triton.is_model_ready(MODEL)  # type: ignore[attr-defined]
    metadata = triton.get_model_metadata(MODEL)  # type: ignore[attr-defined]
    assert metadata["inputs"][0]["name"] == "IMAGE" and metadata["inputs"][0]["datatype"] == "BYTES"
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"LABELS": "UINT8", "STATS": "BYTES"}
    config = triton.get_model_config(MODEL)  # type: ignore[attr-defined]
    assert config["max_batch_size"] == 8
    assert triton.get_server_metadata()["name"] == "faseg"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["astronaut.jpg", "coffee.png", "chelsea.webp"])
def test_binary_infer_matches_v1_png(name: str, triton: object, client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = photos[name]
    image = triton_http.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    outputs = [triton_http.InferRequestedOutput("LABELS", binary_data=True)]
    result = triton.infer(MODEL, [image], outputs=outputs)  # type: ignore[attr-defined]
    labels = result.as_numpy("LABELS")
    expected = _v1_png_labels(client, data)
    assert labels.dtype == np.uint8 and labels.shape == (1, *expected.shape)
    np.testing.assert_array_equal(labels[0], expected)


def test_batched_infer_and_stats_output(triton: object, client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = [photos["astronaut.jpg"], photos["astronaut.jpg"]]
    image = triton_http.InferInput("IMAGE", [2, 1], "BYTES")
    image.set_data_from_numpy(np.array(data, dtype=np.object_).reshape(2, 1), binary_data=True)
    result = triton.infer(MODEL, [image])  # type: ignore[attr-defined]  # no outputs: all, binary
    labels = result.as_numpy("LABELS")
    assert labels.shape == (2, 512, 512)
    assert result.as_numpy("STATS").shape == (2, 1)  # config dims [1], metadata [-1, 1]
    stats = [json.loads(s) for s in result.as_numpy("STATS")[:, 0]]
    single = client.post("/v1/segment", content=data[0]).json()["stats"]
    assert stats[0] == stats[1] == single


def test_json_infer_with_base64(client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = photos["coffee.png"]
    request = {
        "id": "r1",
        "inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}],
        "outputs": [{"name": "LABELS"}],
        "parameters": {"output_size": "model"},
    }
    response = client.post(f"/v2/models/{MODEL}/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == MODEL
    [labels] = body["outputs"]
    assert labels["datatype"] == "UINT8" and labels["shape"] == [1, 85, 128]
    assert len(labels["data"]) == 85 * 128


def test_v2_errors_use_the_kserve_shape(client: httpx.Client, photos: dict[str, bytes]) -> None:
    bad_json = client.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    assert bad_json.status_code == 400 and isinstance(bad_json.json()["error"], str)
    wrong_input = client.post(
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1]}]},
    )
    assert wrong_input.status_code == 400
    not_image = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}
    assert client.post(f"/v2/models/{MODEL}/infer", json=not_image).status_code == 400
    unknown = client.get("/v2/models/nope")
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    different_sizes = {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [2],
                "datatype": "BYTES",
                "data": [
                    base64.b64encode(photos["coffee.png"]).decode(),
                    base64.b64encode(photos["rocket.jpg"]).decode(),
                ],
            }
        ]
    }
    assert client.post(f"/v2/models/{MODEL}/infer", json=different_sizes).status_code == 400


def test_statistics(client: httpx.Client, triton: object) -> None:
    stats = triton.get_inference_statistics(MODEL)  # type: ignore[attr-defined]
    [model] = stats["model_stats"]
    assert model["name"] == MODEL and model["inference_count"] >= 1 and model["execution_count"] >= 1
    assert model["inference_stats"]["success"]["count"] >= 1 and model["batch_stats"]
    assert client.get("/v2/health/ready").json() == {"ready": True}


REPO = Path(__file__).resolve().parents[2]


def test_stats_output_shape_agrees_between_config_metadata_and_answer(
    triton: object, client: httpx.Client, photos: dict[str, bytes]
) -> None:
    config = {o["name"]: o for o in triton.get_model_config(MODEL)["output"]}  # type: ignore[attr-defined]
    metadata = {o["name"]: o for o in triton.get_model_metadata(MODEL)["outputs"]}  # type: ignore[attr-defined]
    for name in ("STATS", "LABELS"):  # Triton: metadata = [-1] (the batch) + config dims
        assert metadata[name]["shape"] == [-1, *config[name]["dims"]], name
    request = {
        "inputs": [
            {
                "name": "IMAGE",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(photos["coffee.png"]).decode()],
            }
        ],
        "outputs": [{"name": "STATS"}],
    }
    [stats] = client.post(f"/v2/models/{MODEL}/infer", json=request).json()["outputs"]
    assert stats["shape"] == [1, *config["STATS"]["dims"]]
    assert len(stats["data"]) == 1 and isinstance(json.loads(stats["data"][0]), list)


def test_pinned_version_config_and_stats(triton: object, client: httpx.Client, photos: dict[str, bytes]) -> None:
    image = triton_http.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([photos["astronaut.jpg"]], dtype=np.object_), binary_data=True)
    triton.infer(MODEL, [image], model_version="1")  # type: ignore[attr-defined]
    assert triton.get_model_config(MODEL, "1") == triton.get_model_config(MODEL)  # type: ignore[attr-defined]
    [model] = triton.get_inference_statistics(MODEL, "1")["model_stats"]  # type: ignore[attr-defined]
    assert model["name"] == MODEL and model["version"] == "1"
    inference = model["inference_stats"]
    for key in ("compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] >= 1 and inference[key]["ns"] > 0, key
    for batch in model["batch_stats"]:
        for key in ("compute_input", "compute_infer", "compute_output"):
            assert batch[key]["count"] >= 1 and batch[key]["ns"] > 0, (batch["batch_size"], key)
    for path in (f"/v2/models/{MODEL}/versions/2/config", f"/v2/models/{MODEL}/versions/2/stats"):
        response = client.get(path)
        assert response.status_code == 404 and isinstance(response.json()["error"], str)


def test_perf_analyzer_input_data_file_is_accepted(triton: object) -> None:
    """benchmarks/perf_analyzer/image_input.json (docs/service.md): one IMAGE element, the b64 of a JPEG, shape
    [1]. The request it describes, sent with tritonclient as perf_analyzer sends it (binary data), is answered."""
    doc = json.loads((REPO / "benchmarks" / "perf_analyzer" / "image_input.json").read_text())
    [step] = doc["data"]
    tensor = step["IMAGE"]
    image = triton_http.InferInput("IMAGE", tensor["shape"], "BYTES")
    image.set_data_from_numpy(np.array([base64.b64decode(tensor["b64"])], dtype=np.object_), binary_data=True)
    result = triton.infer(MODEL, [image])  # type: ignore[attr-defined]
    assert result.as_numpy("LABELS").shape[0] == 1 and result.as_numpy("STATS").shape == (1, 1)
