"""Graceful drain on SIGTERM: in-flight work is answered, new work gets 503, the process exits 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from service_http import metric, post_concurrently, scrape
from service_server import ServerFactory

IN_FLIGHT = 8


def test_sigterm_drains_in_flight_requests(server_factory: ServerFactory, photos: dict[str, bytes]) -> None:
    # A long queue delay holds the 8 requests in the queue while the signal arrives.
    server = server_factory(
        "--max-queue-delay-ms",
        "1500",
        "--max-batch-size",
        "16",
        "--drain-delay-s",
        "0.5",
        "--drain-timeout-s",
        "20",
    )
    results: list[httpx.Response] = []
    worker = threading.Thread(
        target=lambda: results.extend(post_concurrently(server.url, [photos["blocks.png"]] * IN_FLIGHT))
    )
    worker.start()
    deadline = time.monotonic() + 10
    while metric(scrape(server.url), "faseg_requests_in_flight") < IN_FLIGHT:
        assert time.monotonic() < deadline, "requests never got in flight"
        time.sleep(0.02)

    server.signal(signal.SIGTERM)
    time.sleep(0.2)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        late = client.post("/v1/segment", content=photos["blocks.png"])
        assert late.status_code == 503 and late.json()["error"]["code"] == "DRAINING"
        assert late.headers["retry-after"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/livez").status_code == 200

    worker.join(timeout=30)
    assert [r.status_code for r in results] == [200] * IN_FLIGHT
    assert server.wait(timeout_s=30) == 0, server.log()
