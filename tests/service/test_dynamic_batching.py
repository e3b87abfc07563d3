"""Dynamic batching through the real server: concurrent requests share model runs, answers do not change."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from service_http import metric, post_concurrently, scrape
from service_server import ServerFactory, ServerProcess

CONCURRENT = 16


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory("--max-queue-delay-ms", "100", "--max-batch-size", "16")
    yield server
    server.stop()


def test_concurrent_requests_batch_and_match_single_answers(server: ServerProcess, photos: dict[str, bytes]) -> None:
    names = sorted(photos)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        single = {n: client.post("/v1/segment?outputs=stats,rle", content=photos[n]).json() for n in names}
    before = scrape(server.url)
    order = [names[i % len(names)] for i in range(CONCURRENT)]
    responses = post_concurrently(server.url, [photos[n] for n in order])
    after = scrape(server.url)
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    for name, response in zip(order, responses, strict=True):
        body = response.json()
        assert body["stats"] == single[name]["stats"] and body["rle"] == single[name]["rle"], name
    images = metric(after, "faseg_batch_size_sum") - metric(before, "faseg_batch_size_sum")
    batches = metric(after, "faseg_batch_size_count") - metric(before, "faseg_batch_size_count")
    assert images == CONCURRENT
    assert images / batches > 1, f"{images} images in {batches} model runs"
    assert max(r.json()["batch_size"] for r in responses) > 1
