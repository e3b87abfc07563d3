"""Journeys (a), (d) and (e) of the README against one fresh `faseg serve` (the bundled demo model, no
arguments but the port; an empty cache, so the first start exports it):

(a) a real photograph in every output format of `/v1/segment` (stats, rle, png as JSON and as the body,
    overlay, hf), all telling the same story;
(d) tritonclient over HTTP in binary and JSON modes, and the model config and statistics of a pinned version;
(e) `faseg loadtest` against it → report.json, report.csv and the latency / throughput plot.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from faseg.service.imaging.encode import read_label_png
from faseg.service.imaging.rle import decode_counts
from journey_cli import Served, faseg, photo
from PIL import Image

from faseg.loadtest.report import check_report

triton_http = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg_cache")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory, fresh_cache: Path) -> Iterator[Served]:
    server = Served(cwd=tmp_path_factory.mktemp("serve"), env={"XDG_CACHE_HOME": str(fresh_cache)})
    yield server
    server.stop()


def _rle_labels(rles: list[dict], shape: tuple[int, int]) -> np.ndarray:
    labels = np.full(shape, -1, dtype=int)
    for r in rles:
        h, w = r["size"]
        runs = decode_counts(r["counts"])  # alternating runs of 0 and 1, column-major (COCO)
        mask = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool).reshape(w, h).T
        assert (labels[mask] == -1).all()
        labels[mask] = r["id"]
    return labels


def test_demo_model_answers_a_photograph_in_every_format(demo_server: Served, fresh_cache: Path) -> None:
    assert list((fresh_cache / "faseg").glob("demo-*.onnx"))  # the first start exported the demo model
    image = photo("astronaut")
    url = demo_server.url + "/v1/segment"
    png_body = httpx.post(url + "?outputs=png", content=image, headers={"Accept": "image/png"}, timeout=60)
    assert png_body.status_code == 200 and png_body.headers["content-type"] == "image/png"
    labels = read_label_png(png_body.content)
    assert labels.shape == (512, 512)

    files = {"image": ("astronaut.jpg", image, "image/jpeg")}  # multipart, as the README's curl sends it
    answer = httpx.post(url + "?outputs=stats,rle,png,overlay,hf", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    np.testing.assert_array_equal(read_label_png(base64.b64decode(body["png"])), labels)
    np.testing.assert_array_equal(_rle_labels(body["rle"], labels.shape), labels)
    present = np.unique(labels).tolist()
    assert [s["id"] for s in sorted(body["stats"], key=lambda s: s["id"])] == present
    assert sum(s["pixels"] for s in body["stats"]) == labels.size
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay"])))
    assert overlay.format == "JPEG" and overlay.size == (512, 512)
    for segment, class_id in zip(body["hf"], present, strict=True):
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(segment["mask"]))))
        np.testing.assert_array_equal(mask == 255, labels == class_id)
        assert segment["score"] is None
    assert [s["label"] for s in body["hf"]] == [demo_server.classes()[i] for i in present]


def test_tritonclient_binary_and_json_pinned_version(demo_server: Served) -> None:
    client = triton_http.InferenceServerClient(url=demo_server.url.removeprefix("http://"))
    try:
        [model] = httpx.get(demo_server.url + "/v1/models", timeout=30).json()["models"]
        name = model["name"]
        assert client.is_server_ready() and client.is_model_ready(name, "1")
        images = [photo("coffee", (320, 240)), photo("coffee", (320, 240))]
        results = {}
        for binary_outputs in (True, False):  # the images are bytes, so tritonclient sends them as binary data
            tensor = triton_http.InferInput("IMAGE", [2, 1], "BYTES")
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(2, 1), binary_data=True)
            outputs = [triton_http.InferRequestedOutput(n, binary_data=binary_outputs) for n in ("LABELS", "STATS")]
            results[binary_outputs] = client.infer(name, [tensor], outputs=outputs, model_version="1")
        labels = results[True].as_numpy("LABELS")
        assert labels.shape == (2, 240, 320)
        np.testing.assert_array_equal(results[False].as_numpy("LABELS"), labels)
        stats = results[False].as_numpy("STATS")
        assert stats.shape == (2, 1) and json.loads(stats[0, 0]) == json.loads(results[True].as_numpy("STATS")[0, 0])
        # Plain JSON all the way (docs/service.md): each BYTES element of IMAGE is the base64 of an image.
        request = {
            "inputs": [
                {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(images[0]).decode()]}
            ],
            "outputs": [{"name": "LABELS"}],
        }
        answer = httpx.post(f"{demo_server.url}/v2/models/{name}/versions/1/infer", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        [out] = answer.json()["outputs"]
        assert out["shape"] == [1, 240, 320]
        np.testing.assert_array_equal(np.array(out["data"]).reshape(240, 320), labels[0])

        config = client.get_model_config(name, "1")
        assert config["max_batch_size"] >= 1 and [i["name"] for i in config["input"]] == ["IMAGE"]
        [stats] = client.get_inference_statistics(name, "1")["model_stats"]
        assert stats["version"] == "1" and stats["inference_count"] >= 4
        for key in ("compute_input", "compute_infer", "compute_output"):
            assert stats["inference_stats"][key]["ns"] > 0, key
    finally:
        client.close()


def test_loadtest_against_the_served_model(demo_server: Served, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the loadtest plot needs matplotlib")
    out = tmp_path / "lt"
    faseg(
        "loadtest", "--url", demo_server.url, "--synthetic", "--concurrency", "1,2", "--duration", "2",
        "--warmup", "0.5", "--synthetic-count", "4", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert check_report(report) == []
    assert [s["concurrency"] for s in report["steps"]] == [1, 2]
    assert report["summary"]["successes"] > 0 and report["summary"].get("errors", 0) == 0
    assert (out / "report.csv").read_text().count("\n") == 3
    with Image.open(out / "latency_throughput.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
