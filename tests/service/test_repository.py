"""A real server on a model repository (docs/service.md, "Model repository"): two models with different
class sets, one with two input buckets; answers equal those of single-model servers on the same files."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from faseg.model.demo import demo_checkpoint_dir
from PIL import Image
from service_http import scrape
from service_images import encode
from service_repository import SQUARE, WIDE, export_demo, place, toy_file
from service_server import BASE_ARGS, ServerProcess
from service_toy_model import CLASSES as TOY_CLASSES

FAST = [*BASE_ARGS, "--max-batch-size", "2"]


def _photo(width: int, height: int, seed: int) -> bytes:
    """A smooth, structured test picture (the demo model answers more than one class on it)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack(
        [
            (128 + 100 * np.sin(x / (17 + seed) + rng.uniform(0, 6))),
            (128 + 100 * np.cos(y / (11 + seed))),
            ((x + y) * 255 / (width + height)),
        ],
        axis=-1,
    )
    return encode(Image.fromarray(image.clip(0, 255).astype(np.uint8)), "PNG")


WIDE_IMAGE = _photo(1024, 512, 1)  # 2:1
SQUARE_IMAGE = _photo(400, 400, 2)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    exported = export_demo(tmp_path_factory.mktemp("demo"))
    return {"square": exported[SQUARE], "wide": exported[WIDE], "toy": toy_file(tmp_path_factory.mktemp("toy"))}


@pytest.fixture(scope="module")
def repository(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    place(files["square"], root, "demo", 1, "square.onnx")
    place(files["wide"], root, "demo", 1, "wide.onnx")
    place(files["toy"], root, "toy", 1)
    broken = root / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an ONNX graph")
    return root


def _server(tmp_path_factory: pytest.TempPathFactory, *args: str) -> ServerProcess:
    log = tmp_path_factory.mktemp("server") / "server.log"
    return ServerProcess([*args, *FAST], log).start()


@pytest.fixture(scope="module")
def servers(
    repository: Path, files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, httpx.Client]]:
    started = [
        _server(tmp_path_factory, "--model-repository", str(repository)),
        _server(tmp_path_factory, "--model", str(files["square"]), "--model-name", "demo"),
        _server(tmp_path_factory, "--model", str(files["wide"]), "--model-name", "demo"),
    ]
    clients = [httpx.Client(base_url=s.url, timeout=60) for s in started]
    try:
        yield dict(zip(("repo", "square", "wide"), clients, strict=True))
    finally:
        for client in clients:
            client.close()
        for server in started:
            server.stop()


def _segment(client: httpx.Client, image: bytes, **params: str) -> httpx.Response:
    return client.post(
        "/v1/segment", params={"outputs": "stats,png", **params}, content=image, headers={"Content-Type": "image/png"}
    )


def test_requests_reach_the_right_bucket_and_match_single_model_servers(servers: dict[str, httpx.Client]) -> None:
    repo = servers["repo"]
    wide = _segment(repo, WIDE_IMAGE, model="demo")
    assert wide.status_code == 200, wide.text
    body = wide.json()
    assert (body["model"], body["model_version"], body["bucket"]) == ("demo", "1", "256x512")
    assert wide.headers["X-Model"] == "demo" and wide.headers["X-Bucket"] == "256x512"
    assert wide.headers["X-Model-Version"] == "1"
    single_wide = _segment(servers["wide"], WIDE_IMAGE).json()
    assert body["png"] == single_wide["png"] and body["stats"] == single_wide["stats"]

    # no model named: the first ready one by name ("broken" has no ready version)
    square = _segment(repo, SQUARE_IMAGE).json()
    assert square["model"] == "demo" and square["bucket"] == "256x256"
    single_square = _segment(servers["square"], SQUARE_IMAGE).json()
    assert square["png"] == single_square["png"] and square["stats"] == single_square["stats"]

    # a named bucket overrides the policy: the 2:1 image through the square file
    forced = _segment(repo, WIDE_IMAGE, model="demo", bucket="256x256").json()
    assert forced["bucket"] == "256x256"
    assert forced["png"] == _segment(servers["square"], WIDE_IMAGE).json()["png"]
    assert forced["png"] != body["png"]  # the buckets really differ on this image


def test_second_model_has_its_own_classes(servers: dict[str, httpx.Client]) -> None:
    response = _segment(servers["repo"], SQUARE_IMAGE, model="toy")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "toy" and body["bucket"] == "96x128"
    assert {s["name"] for s in body["stats"]} <= set(TOY_CLASSES)
    demo_stats = _segment(servers["repo"], SQUARE_IMAGE, model="demo").json()["stats"]
    assert not {s["name"] for s in demo_stats} & set(TOY_CLASSES)


def test_one_request_spans_buckets(servers: dict[str, httpx.Client]) -> None:
    files = [("image", ("a.png", WIDE_IMAGE, "image/png")), ("image", ("b.png", SQUARE_IMAGE, "image/png"))]
    response = servers["repo"].post("/v1/segment:batch", params={"model": "demo"}, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["result"]["bucket"] for r in results] == ["256x512", "256x256"]


def test_v2_says_version_and_bucket(servers: dict[str, httpx.Client]) -> None:
    request = {
        "inputs": [
            {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(WIDE_IMAGE).decode()]}
        ],
        "outputs": [{"name": "STATS", "parameters": {"binary_data": False}}],
    }
    response = servers["repo"].post("/v2/models/demo/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "demo" and body["model_version"] == "1"
    assert body["parameters"]["buckets"] == ["256x512"]


def test_listing_readiness_and_unknown_names(servers: dict[str, httpx.Client]) -> None:
    repo = servers["repo"]
    models = repo.get("/v1/models").json()["models"]
    listed = {(m["name"], m["version"]): m for m in models}
    assert set(listed) == {("demo", "1"), ("toy", "1")}
    assert listed["demo", "1"]["bucket_names"] == ["256x256", "256x512"] and listed["demo", "1"]["state"] == "READY"
    assert len(listed["demo", "1"]["classes"]) == 10 and len(listed["toy", "1"]["classes"]) == len(TOY_CLASSES)

    assert repo.get("/v2/models/demo/ready").status_code == 200
    assert repo.get("/v2/models/demo/versions/1/ready").status_code == 200
    assert repo.get("/v2/models/toy/ready").status_code == 200
    assert repo.get("/readyz").status_code == 200

    unknown_model = _segment(repo, SQUARE_IMAGE, model="nope")
    assert unknown_model.status_code == 404 and "demo" in unknown_model.text and "toy" in unknown_model.text
    unknown_version = _segment(repo, SQUARE_IMAGE, model="demo", version="7")
    assert unknown_version.status_code == 404 and "['1']" in unknown_version.text
    unknown_bucket = _segment(repo, SQUARE_IMAGE, model="demo", bucket="128x128")
    assert unknown_bucket.status_code == 404 and "256x512" in unknown_bucket.text
    assert repo.post("/v2/models/nope/infer", content=b"{}").status_code == 404


def test_broken_model_is_not_ready_and_reported(servers: dict[str, httpx.Client]) -> None:
    repo = servers["repo"]
    ready = repo.get("/v2/models/broken/ready")
    assert ready.status_code == 503
    index = {(e["name"], e.get("version")): e for e in repo.post("/v2/repository/index").json()}
    assert index["broken", "1"]["state"] == "UNAVAILABLE" and index["broken", "1"]["reason"]
    assert index["demo", "1"]["state"] == "READY" and index["toy", "1"]["state"] == "READY"
    refused = _segment(repo, SQUARE_IMAGE, model="broken")
    assert refused.status_code == 503 and "no ready version" in refused.text
    metrics = scrape(str(repo.base_url).rstrip("/"))
    assert 'faseg_model_load_failures_total{model="broken",version="1"} 1.0' in metrics
    assert 'faseg_model_inference_images_total{bucket="256x512",model="demo",version="1"}' in metrics


DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


def _documented_commands() -> list[str]:
    """The shell lines of the bash blocks of docs/service.md's "Model repository" section."""
    text = DOC.read_text()
    section = text[text.index("## Model repository") :]
    section = section[: section.index("\n## ", 1)]
    lines = []
    for block in section.split("```bash\n")[1:]:
        lines += [line for line in block.split("```")[0].splitlines() if line.strip()]
    return lines


def test_documented_examples_work(files: dict[str, Path], tmp_path: Path) -> None:
    """Build the repository of docs/service.md as documented and run its commands against it."""
    commands = _documented_commands()
    exports = [c for c in commands if c.startswith("faseg export onnx")]
    (serve,) = [c for c in commands if c.startswith("faseg serve")]
    curls = [c for c in commands if c.startswith("curl")]
    assert len(exports) == 2 and len(curls) >= 6
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "demo_model").symlink_to(demo_checkpoint_dir())
    faseg = Path(sys.executable).with_name("faseg")
    for command in exports:
        result = subprocess.run(
            [str(faseg), *shlex.split(command)[1:]], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    place(files["toy"], tmp_path / "models", "toy", 1)  # "any other export"
    (tmp_path / "wide.png").write_bytes(WIDE_IMAGE)
    args = [str(tmp_path / a) if a == "models" else a for a in shlex.split(serve)[2:]]
    server = ServerProcess([*args, *FAST], tmp_path / "server.log").start()
    try:
        for command in curls:
            command = command.replace("http://127.0.0.1:8000", server.url).replace(
                "curl -s", "curl -sS --fail-with-body"
            )
            result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
            if "bucket=256x256" in command:
                assert json.loads(result.stdout)["bucket"] == "256x256"
            elif "segment?model=demo" in command:
                assert json.loads(result.stdout)["bucket"] == "256x512"
    finally:
        server.stop()


def test_torch_checkpoint_directory_as_a_bucket(tmp_path: Path) -> None:
    """A version directory may hold a torch checkpoint directory instead of an exported file."""
    (tmp_path / "repo" / "demo" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "demo" / "1" / "checkpoint").symlink_to(demo_checkpoint_dir())
    server = ServerProcess(["--model-repository", str(tmp_path / "repo"), *FAST], tmp_path / "torch.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            [model] = client.get("/v1/models").json()["models"]
            assert model["backend"] == "torch" and model["name"] == "demo" and model["state"] == "READY"
            answer = _segment(client, SQUARE_IMAGE)
            assert answer.status_code == 200 and answer.json()["bucket"] == model["bucket_names"][0]
    finally:
        server.stop()
