"""The native /v1 API and the operational endpoints, against a real server process over loopback."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from faseg.service.imaging.encode import read_label_png
from PIL import Image
from service_images import blocks_image, encode
from service_server import ServerFactory, ServerProcess

mask_api = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0.x's Cython decode triggers numpy 2's __array__(copy=...) deprecation inside itself.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory("--max-queue-delay-ms", "2")
    yield server
    server.stop()


def _segment(client: httpx.Client, data: bytes, params: str = "", ctype: str = "image/png", **kw) -> httpx.Response:
    return client.post(f"/v1/segment{params}", content=data, headers={"Content-Type": ctype, **kw})


def test_default_answer_has_stats_model_and_timing(client: httpx.Client, photos: dict[str, bytes]) -> None:
    response = _segment(client, photos["astronaut.jpg"], ctype="image/jpeg", **{"X-Request-ID": "req-123"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123"
    body = response.json()
    assert body["request_id"] == "req-123"
    assert (body["model"], body["backend"], body["device"]) == ("toy", "onnxruntime", "cpu")
    assert body["image"] == {"width": 512, "height": 512, "format": "JPEG", "orientation_applied": False}
    assert body["output"] == {"width": 512, "height": 512, "size": "original"}
    assert set(body["timing_ms"]) == {"decode", "queue", "infer", "postprocess", "encode", "total"}
    assert "rle" not in body and "png" not in body
    stats = body["stats"]
    assert sum(s["pixels"] for s in stats) == 512 * 512
    assert all({"id", "name", "pixels", "fraction", "bbox"} <= s.keys() for s in stats)
    assert "server-timing" in response.headers


def test_multipart_and_raw_give_the_same_answer(client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = photos["chelsea.webp"]
    raw = _segment(client, data, "?outputs=stats,rle", ctype="image/webp").json()
    multipart = client.post("/v1/segment?outputs=stats&outputs=rle", files={"image": ("c.webp", data)}).json()
    assert raw["stats"] == multipart["stats"] and raw["rle"] == multipart["rle"]
    assert raw["image"]["format"] == "WEBP"


def test_rle_and_png_agree_and_follow_the_image(client: httpx.Client) -> None:
    image = blocks_image(300, 200)
    body = _segment(client, encode(image, "PNG"), "?outputs=rle,png,stats").json()
    labels = read_label_png(base64.b64decode(body["png"]))
    assert labels.shape == (200, 300)
    edges = np.linspace(0, 300, 7).astype(int)
    for k in range(6):  # the middle of every stripe has its class
        assert (labels[:, (edges[k] + edges[k + 1]) // 2] == k).all()
    from_rle = np.full(labels.shape, 255, dtype=np.uint8)
    for rle in body["rle"]:
        mask = mask_api.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
        assert rle["name"] == ["black", "red", "green", "blue", "white", "yellow"][rle["id"]]
        from_rle[mask.astype(bool)] = rle["id"]
    np.testing.assert_array_equal(from_rle, labels)
    pixels = {s["id"]: s["pixels"] for s in body["stats"]}
    assert pixels == {k: int((labels == k).sum()) for k in range(6)}


def test_png_body_on_accept(client: httpx.Client, photos: dict[str, bytes]) -> None:
    data = photos["coffee.png"]
    as_json = _segment(client, data, "?outputs=png").json()
    response = _segment(client, data, "?outputs=png", Accept="image/png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == "toy" and response.headers["x-output-size"] == "600x400"
    np.testing.assert_array_equal(read_label_png(response.content), read_label_png(base64.b64decode(as_json["png"])))
    with Image.open(io.BytesIO(response.content)) as png:
        assert png.mode == "P" and png.size == (600, 400)
    # JSON preferred, or no png asked for: JSON
    assert _segment(client, data, "?outputs=png", Accept="application/json, image/png;q=0.5").json()["png"]
    assert "stats" in _segment(client, data, Accept="image/png").json()


def test_output_size_model_and_overlay(client: httpx.Client) -> None:
    body = _segment(client, encode(blocks_image(160, 120), "PNG"), "?outputs=png,overlay&output_size=model").json()
    assert body["output"] == {"width": 128, "height": 96, "size": "model"}
    assert read_label_png(base64.b64decode(body["png"])).shape == (96, 128)
    with Image.open(io.BytesIO(base64.b64decode(body["overlay"]))) as overlay:
        assert overlay.format == "JPEG" and overlay.size == (128, 96)


def test_exif_orientation(client: httpx.Client) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    data = encode(blocks_image(240, 80), "JPEG", exif=exif.tobytes())
    body = _segment(client, data, "?outputs=png", ctype="image/jpeg").json()
    assert body["image"]["orientation_applied"] is True
    assert (body["image"]["width"], body["image"]["height"]) == (80, 240)
    labels = read_label_png(base64.b64decode(body["png"]))
    assert labels.shape == (240, 80)
    # stripes were vertical as stored; displayed they are horizontal, class 0 at the bottom
    assert labels[-5, 40] == 0 and labels[5, 40] == 5
    raw = _segment(client, data, "?outputs=png&apply_exif=false", ctype="image/jpeg").json()
    assert (raw["image"]["width"], raw["image"]["height"]) == (240, 80)


def test_batch_endpoint_answers_each_image(client: httpx.Client, photos: dict[str, bytes]) -> None:
    names = ["astronaut.jpg", "coffee.png", "chelsea.webp"]
    files = [("image", (n, photos[n])) for n in names]
    files.insert(1, ("image", ("bad.png", b"not an image at all")))
    response = client.post("/v1/segment:batch?outputs=stats,rle", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200, 200]
    assert results[1]["error"]["code"] == "INVALID_IMAGE"
    for result, name in zip([results[0], results[2], results[3]], names, strict=True):
        single = _segment(client, photos[name], "?outputs=stats,rle").json()
        assert result["result"]["stats"] == single["stats"] and result["result"]["rle"] == single["rle"]


def test_models_shows_effective_settings(client: httpx.Client) -> None:
    [model] = client.get("/v1/models").json()["models"]
    assert model["name"] == "toy" and model["ready"] is True and model["input_size"] == [96, 128]
    assert [c["name"] for c in model["classes"]] == ["black", "red", "green", "blue", "white", "yellow"]
    settings = model["settings"]
    assert settings["backend"] == "onnxruntime" and settings["max_queue_delay_ms"] == 2.0
    assert settings["model"].endswith("toy.onnx") and settings["access_log"] is False
    assert client.get("/v1/models/toy").json()["name"] == "toy"
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "MODEL_NOT_FOUND"


def test_health_metrics_and_schema(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "faseg_requests_total",
        "faseg_stage_duration_seconds_bucket",
        "faseg_batch_size_bucket",
        "faseg_queue_depth",
        "faseg_model_info",
        "faseg_ready 1.0",
    ):
        assert name in metrics.text
    assert 'faseg_stage_duration_seconds_count{stage="decode"}' in metrics.text
    schema = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/segment:batch", "/v2/models/{model}/infer"} <= schema["paths"].keys()
    unknown = client.get("/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "NOT_FOUND"
    assert unknown.headers["x-request-id"]
