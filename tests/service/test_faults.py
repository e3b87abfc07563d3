"""Faults, each with the behaviour docs/service.md promises ("Overload, faults and access"):
a backend that raises, hangs or runs out of memory (in-process fake backends), a client that uploads
slowly, a model file that cannot be loaded, and SIGTERM twice (real server processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_fake_backend import MARK, FakeBackend, client, wait_ready
from service_http import metric, post_concurrently, scrape
from service_images import blocks_image, encode
from service_server import ServerFactory, free_port

EXIT_FAILED = 1
EXIT_INTERRUPTED = 3
EXIT_MODEL_RUN_HUNG = 4
# A real server process (faseg.service.server.run) serving a FakeBackend whose marked images hang for good.
HUNG_SERVER = """
import sys
from faseg.service import Settings
from faseg.service.server import run
from service_fake_backend import FakeBackend
settings = Settings(port=int(sys.argv[1]), warmup=False, drain_delay_s=0, drain_timeout_s=1, stall_timeout_s=60)
sys.exit(run(settings, FakeBackend("hang")))
"""


def marked_png() -> bytes:
    image = np.array(blocks_image())
    image[:8, :8] = MARK  # a block: resizing onto the model input keeps its corner pixel
    return encode(Image.fromarray(image), "PNG")


GOOD = encode(blocks_image(), "PNG")


def test_backend_raising_fails_only_its_batch() -> None:
    backend = FakeBackend("raise")
    with client(backend) as c:
        wait_ready(c)
        bad = c.post("/v1/segment", content=marked_png())
        assert bad.status_code == 500
        assert bad.json()["error"] == {"code": "INTERNAL", "message": "the backend failed on this batch"}
        good = c.post("/v1/segment", content=GOOD)
        assert good.status_code == 200 and sorted(s["id"] for s in good.json()["stats"]) == list(range(6))
        assert c.get("/readyz").status_code == 200
        # the batch endpoint: a failing run fails its images, the next run serves the rest
        v2 = c.post("/v2/models/fake/infer", json=_v2_body(marked_png()))
        assert v2.status_code == 500 and v2.json() == {"error": "the backend failed on this batch"}
        assert c.post("/v2/models/fake/infer", json=_v2_body(GOOD)).status_code == 200
        assert metric(c.get("/metrics").text, "faseg_ready") == 1


def _v2_body(image: bytes) -> dict:
    import base64

    data = base64.b64encode(image).decode()
    return {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [data]}]}


def test_hung_backend_answers_504_then_turns_unready_and_recovers() -> None:
    backend = FakeBackend("hang")
    with client(backend, stall_timeout_s=0.5) as c:
        wait_ready(c)
        try:
            stuck = c.post("/v1/segment?timeout_ms=300", content=marked_png())
            assert stuck.status_code == 504 and stuck.json()["error"]["code"] == "DEADLINE_EXCEEDED"
            assert backend.hanging.is_set()
            body = wait_ready(c, 503)
            assert body["error"]["code"] == "BACKEND_STALLED"
            assert c.get("/v2/health/ready").status_code == 503
            assert c.get("/livez").status_code == 200
            refused = c.post("/v1/segment", content=GOOD)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "BACKEND_STALLED"
            assert int(refused.headers["retry-after"]) >= 1
            text = c.get("/metrics").text
            assert metric(text, "faseg_ready") == 0
            assert metric(text, "faseg_rejections_total", '{reason="backend_stalled"}') >= 1
        finally:
            backend.release.set()
        wait_ready(c)
        assert c.post("/v1/segment", content=GOOD).status_code == 200


def test_out_of_memory_splits_the_batch_then_503_for_the_image_alone() -> None:
    backend = FakeBackend("oom")
    with client(backend, max_images_per_request=4) as c:
        wait_ready(c)
        files = [("image", (f"{i}.png", marked_png() if i == 1 else GOOD, "image/png")) for i in range(3)]
        response = c.post("/v1/segment:batch", files=files)
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r["status"] for r in results] == [200, 503, 200]
        assert results[1]["error"]["code"] == "OUT_OF_MEMORY"
        assert backend.batches == [1, 1]  # 3 → (1 | 2 → 1 + 1): the good images ran alone
        text = c.get("/metrics").text
        assert metric(text, "faseg_out_of_memory_total") == 3  # the 3-batch, the 2-batch, the marked image
        alone = c.post("/v1/segment", content=marked_png())
        assert alone.status_code == 503 and alone.json()["error"]["code"] == "OUT_OF_MEMORY"
        assert c.post("/v1/segment", content=GOOD).status_code == 200
        assert c.get("/readyz").status_code == 200


def test_slow_upload_gets_408_and_holds_no_queue_slot(server_factory: ServerFactory) -> None:
    server = server_factory("--body-timeout-s", "1.5", "--max-queue-size", "1")
    try:
        slow = socket.create_connection(("127.0.0.1", server.port))
        head = f"POST /v1/segment HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: {len(GOOD)}\r\n\r\n"
        slow.sendall(head.encode() + GOOD[:100])  # then nothing more
        with httpx.Client(base_url=server.url, timeout=30) as c:
            # the queue holds one image: a slow upload occupying it would make this 429
            assert c.post("/v1/segment", content=GOOD).status_code == 200
        slow.settimeout(10)
        answer = _read_response(slow)
        slow.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert b" 408 " in status_line, answer
        assert b"connection: close" in rest.lower()
        assert b'"code":"REQUEST_TIMEOUT"' in answer
        text = scrape(server.url)
        assert metric(text, "faseg_rejections_total", '{reason="request_timeout"}') == 1
        assert metric(text, "faseg_requests_total", '{code="408",endpoint="/v1/segment"}') == 1
        assert metric(text, "faseg_queue_depth") == 0
    finally:
        server.stop()


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _start_module(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "faseg.service", "--port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["truncated", "not_onnx"])
def test_unloadable_model_exits_1_with_one_line(kind: str, toy_onnx: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    whole = toy_onnx.read_bytes()
    model.write_bytes(whole[: len(whole) // 2] if kind == "truncated" else b"\x89PNG\r\n\x1a\nnot a model at all")
    result = _start_module("--model", str(model))
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == EXIT_FAILED, output
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len(lines) == 1 and "cannot load the model" in lines[0] and "model.onnx" in lines[0], output


def test_second_sigterm_cuts_the_drain_short(server_factory: ServerFactory) -> None:
    # A long queue delay holds the requests queued; the drain would wait the whole delay for them.
    server = server_factory(
        "--max-queue-delay-ms", "10000", "--max-batch-size", "16", "--default-timeout-ms", "60000",
        "--drain-delay-s", "0", "--drain-timeout-s", "120",
    )  # fmt: skip
    results: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: results.extend(post_concurrently(server.url, [GOOD] * 4)))
    worker.start()
    deadline = time.monotonic() + 10
    while metric(scrape(server.url), "faseg_queue_depth") < 4:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.02)
    server.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert server.process is not None and server.process.poll() is None  # the first signal drains
    server.signal(signal.SIGTERM)
    assert server.wait(timeout_s=15) == EXIT_INTERRUPTED, server.log()
    worker.join(timeout=15)
    assert [r.status_code for r in results] == [503] * 4
    assert all(r.json()["error"]["code"] == "DRAINING" for r in results)


def test_sigterm_with_a_hung_model_run_exits_4_after_the_drain(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", HUNG_SERVER, str(port)], env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        stuck = httpx.post(f"{url}/v1/segment?timeout_ms=300", content=marked_png(), timeout=10)
        assert stuck.status_code == 504, stuck.text  # the model run goes on hanging in its thread
        process.send_signal(signal.SIGTERM)
        # Drain (1 s), close (1 s for the batcher), then exit without joining the hung thread.
        assert process.wait(timeout=30) == EXIT_MODEL_RUN_HUNG, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "model run(s) never returned" in log.read_text()
