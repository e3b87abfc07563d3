"""Back-pressure and cancellation through the real server: a full queue answers 429 with Retry-After
(never 5xx), and a client that disconnects while queued never has its image run."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from service_http import metric, post_concurrently, scrape
from service_server import ServerFactory, ServerProcess

QUEUE_SIZE = 4
CLIENTS = 32
# max_batch_size above the queue size: a batch never fills, so every batch waits the full delay and the
# queue stays full long enough for the burst to meet it.
QUEUE_DELAY_MS = 1000


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory(
        "--max-queue-size",
        str(QUEUE_SIZE),
        "--max-batch-size",
        "8",
        "--max-queue-delay-ms",
        str(QUEUE_DELAY_MS),
    )
    yield server
    server.stop()


def test_full_queue_answers_429_and_accepted_requests_are_right(
    server: ServerProcess, photos: dict[str, bytes]
) -> None:
    names = ["astronaut.jpg", "blocks.png"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        single = {n: client.post("/v1/segment?outputs=stats,rle", content=photos[n]).json() for n in names}
    order = [names[i % 2] for i in range(CLIENTS)]
    responses = post_concurrently(server.url, [photos[n] for n in order])
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) > 0 and codes.count(200) >= QUEUE_SIZE
    for name, response in zip(order, responses, strict=True):
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["code"] == "QUEUE_FULL"
        else:
            assert response.json()["stats"] == single[name]["stats"]
            assert response.json()["rle"] == single[name]["rle"]
    assert metric(scrape(server.url), "faseg_rejections_total", '{reason="queue_full"}') == codes.count(429)


def _wait_for(url: str, name: str, value: float, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(scrape(url), name) != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_disconnected_client_is_dropped_before_running(server: ServerProcess, photos: dict[str, bytes]) -> None:
    before = scrape(server.url)
    body = photos["blocks.png"]
    request = (
        f"POST /v1/segment HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(request + body)
    _wait_for(server.url, "faseg_queue_depth", 1.0)
    sock.close()
    _wait_for(server.url, "faseg_queue_depth", 0.0)
    time.sleep(QUEUE_DELAY_MS / 1000 + 0.3)  # past the moment its batch would have run
    after = scrape(server.url)

    def delta(name: str, labels: str = "") -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    assert delta("faseg_client_disconnects_total") == 1
    assert delta("faseg_images_dropped_total", '{reason="cancelled"}') == 1
    assert delta("faseg_inference_images_total") == 0
    assert delta("faseg_batches_total") == 0
    assert delta("faseg_requests_total", '{code="499",endpoint="/v1/segment"}') == 1


def test_deadline_passing_in_the_queue_gives_504(server: ServerProcess, photos: dict[str, bytes]) -> None:
    before = scrape(server.url)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # The batch waits QUEUE_DELAY_MS for company; this request allows only 200 ms.
        response = client.post("/v1/segment?timeout_ms=200", content=photos["blocks.png"])
    assert response.status_code == 504 and response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    after = scrape(server.url)
    assert (
        metric(after, "faseg_images_dropped_total", '{reason="deadline"}')
        - metric(before, "faseg_images_dropped_total", '{reason="deadline"}')
        == 1
    )
    assert metric(after, "faseg_inference_images_total") == metric(before, "faseg_inference_images_total")
