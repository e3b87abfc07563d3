"""Versions and reload on a real server (docs/service.md, "Versions and reload"): a zero-downtime swap
under a closed-loop load, a failed load that leaves the serving version in place, unloading while requests
are queued, and polling."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from service_http import scrape
from service_images import blocks_image, encode
from service_repository import place
from service_server import BASE_ARGS, ServerProcess

IMAGE = encode(blocks_image(), "PNG")
CONCURRENCY = 8


@dataclass(frozen=True)
class Answer:
    started: float  # time.time()
    ended: float
    status: int
    version: str | None


def _segment(client: httpx.Client, **params: str) -> httpx.Response:
    return client.post("/v1/segment", params=params, content=IMAGE, headers={"Content-Type": "image/png"})


def _closed_loop(url: str, stop: threading.Event, answers: list[Answer]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.time()
            response = _segment(client, model="toy")
            version = response.json().get("model_version") if response.status_code == 200 else None
            answers.append(Answer(started, time.time(), response.status_code, version))


@pytest.fixture
def repository(tmp_path: Path, toy_onnx: Path) -> Path:
    root = tmp_path / "repository"
    place(toy_onnx, root, "toy", 1)
    return root


@pytest.fixture
def server(repository: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(["--model-repository", str(repository), *BASE_ARGS], tmp_path / "server.log").start()
    yield process
    process.stop()


def _index(client: httpx.Client) -> dict[tuple[str, str | None], dict[str, str]]:
    return {(e["name"], e.get("version")): e for e in client.post("/v2/repository/index").json()}


def test_zero_downtime_swap(server: ServerProcess, repository: Path, toy_onnx: Path) -> None:
    answers: list[Answer] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_closed_loop, args=(server.url, stop, answers)) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        place(toy_onnx, repository, "toy", 2)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            loaded = client.post("/v2/repository/models/toy/load", json={})
            load_done = time.time()
            assert loaded.status_code == 200, loaded.text
            models = client.get("/v1/models").json()["models"]
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert [(m["name"], m["version"]) for m in models] == [("toy", "2")]  # version 1 drained and unloaded
    ready_since = models[0]["ready_since"]
    assert answers and all(a.status == 200 for a in answers), {a.status for a in answers}
    versions = [a.version for a in answers]
    assert set(versions) == {"1", "2"}, "the load ran before and after the swap"
    assert all(a.ended >= ready_since for a in answers if a.version == "2")
    assert all(a.version == "2" for a in answers if a.started >= load_done)
    first_v2 = min(a.ended for a in answers if a.version == "2")
    assert all(a.version == "2" for a in answers if a.started > first_v2), "no request went back to version 1"


def test_failed_load_keeps_serving_version(server: ServerProcess, repository: Path) -> None:
    broken = repository / "toy" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not an ONNX graph")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        refused = client.post("/v2/repository/models/toy/load", json={})
        assert refused.status_code == 400 and "version 2" in refused.json()["error"]
        index = _index(client)
        assert index["toy", "2"]["state"] == "UNAVAILABLE" and index["toy", "2"]["reason"]
        assert index["toy", "1"]["state"] == "READY"
        response = _segment(client, model="toy")
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        pinned = _segment(client, model="toy", version="2")
        assert pinned.status_code == 404 and "['1']" in pinned.text
        (repository / "toy" / "config.json").write_text('{"max_batch_size": "eight"}')
        refused = client.post("/v2/repository/models/toy/load", json={})
        assert refused.status_code == 400 and "max_batch_size" in refused.json()["error"]
        assert "keeps serving versions ['1']" in refused.json()["error"]
        assert _segment(client, model="toy").status_code == 200
    assert 'faseg_model_load_failures_total{model="toy",version="2"} 1.0' in scrape(server.url)


def test_unload_with_queued_requests(server: ServerProcess) -> None:
    results: list[int] = []

    def one() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            results.extend(_segment(client, model="toy").status_code for _ in range(3))

    threads = [threading.Thread(target=one) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v2/repository/models/toy/unload", json={}).status_code == 200
        for thread in threads:
            thread.join(60)
        assert results and set(results) <= {200, 503}, results
        after = _segment(client, model="toy")
        assert after.status_code == 503 and "no ready version" in after.text
        assert client.get("/v2/models/toy/ready").status_code == 503
        assert _index(client)["toy", "1"]["state"] == "UNAVAILABLE"
        assert client.post("/v2/repository/models/toy/load", json={}).status_code == 200  # and back
        assert _segment(client, model="toy").status_code == 200
        assert client.post("/v2/repository/models/nope/load", json={}).status_code == 404


def test_poll_picks_up_a_new_version(repository: Path, toy_onnx: Path, tmp_path: Path) -> None:
    args = ["--model-repository", str(repository), "--poll-repository-s", "0.3", *BASE_ARGS]
    process = ServerProcess(args, tmp_path / "poll.log").start()
    try:
        place(toy_onnx, repository, "toy", 2)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=process.url, timeout=30) as client:
            while client.get("/v2/models/toy/versions/2/ready").status_code != 200:
                assert time.monotonic() < deadline, process.log()
                time.sleep(0.2)
            assert _segment(client, model="toy").json()["model_version"] == "2"
            shutil.rmtree(repository / "toy")
            while client.get("/v2/models/toy/ready").status_code != 503:
                assert time.monotonic() < deadline, process.log()
                time.sleep(0.2)
    finally:
        process.stop()


def test_pinned_versions_with_num_versions_2(repository: Path, toy_onnx: Path, tmp_path: Path) -> None:
    place(toy_onnx, repository, "toy", 2)
    (repository / "toy" / "config.json").write_text('{"num_versions": 2, "bucket": "96x128"}')
    process = ServerProcess(["--model-repository", str(repository), *BASE_ARGS], tmp_path / "pin.log").start()
    try:
        with httpx.Client(base_url=process.url, timeout=30) as client:
            assert _segment(client, model="toy").json()["model_version"] == "2"  # the highest ready version
            assert _segment(client, model="toy", version="1").json()["model_version"] == "1"
            pinned = client.post(
                "/v2/models/toy/versions/1/infer",
                json={"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": []}]},
            )
            assert pinned.status_code == 400  # reached version 1 (no images is the client's error)
            assert client.get("/v2/models/toy/versions/1/ready").status_code == 200
            assert client.get("/v2/models/toy").json()["versions"] == ["2", "1"]
            described = client.get("/v1/models").json()["models"]
            assert [(m["version"], m["default_bucket"]) for m in described] == [("1", "96x128"), ("2", "96x128")]
    finally:
        process.stop()


def test_tritonclient_repository_calls(server: ServerProcess, repository: Path, toy_onnx: Path) -> None:
    """get_model_repository_index, load_model and unload_model as tritonclient sends them."""
    triton_http = pytest.importorskip("tritonclient.http")
    InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert {(e["name"], e["version"], e["state"]) for e in client.get_model_repository_index()} == {
            ("toy", "1", "READY")
        }
        place(toy_onnx, repository, "toy", 2)
        client.load_model("toy")
        assert client.is_model_ready("toy", "2") and client.get_model_metadata("toy")["versions"] == ["2"]
        with pytest.raises(InferenceServerException, match="not supported"):
            client.load_model("toy", config='{"max_batch_size": 2}')
        client.unload_model("toy")
        assert not client.is_model_ready("toy")
        with pytest.raises(InferenceServerException, match="nope"):
            client.load_model("nope")
    finally:
        client.close()
