"""Cheap rejection at the ASGI layer: the answer is the route's own (status, JSON body, Retry-After, metrics),
but given before routing — shown by a request with bad query parameters, which the route would refuse with
422 after parsing them and which the admission layer refuses first from its headers."""

from __future__ import annotations

import pytest
from faseg.service.core.errors import QueueFull
from fastapi.testclient import TestClient
from service_fake_backend import FakeBackend, client, wait_ready
from service_http import metric
from service_images import blocks_image, encode

GOOD = encode(blocks_image(), "PNG")
MAX_BODY = 4096


def _refuse_queue(c: TestClient) -> None:
    def full(images: int) -> None:
        raise QueueFull("the queue holds 64 of 64 images", retry_after_s=7)

    c.app.state.runtime.batcher.check_room = full  # type: ignore[attr-defined]


def _drain(c: TestClient) -> None:
    c.app.state.lifecycle.begin_drain()  # type: ignore[attr-defined]


CASES = {
    # name: (set-up, path, headers, body, status, code)
    "queue_full": (_refuse_queue, "/v1/segment", {"Content-Type": "image/png"}, GOOD, 429, "QUEUE_FULL"),
    "draining": (_drain, "/v1/segment:batch", {"Content-Type": "image/png"}, GOOD, 503, "DRAINING"),
    "too_large": (None, "/v1/segment", {"Content-Type": "image/png"}, b"x" * (MAX_BODY + 1), 413, "PAYLOAD_TOO_LARGE"),
    "unsupported_type": (None, "/v1/segment", {"Content-Type": "text/plain"}, GOOD, 415, "UNSUPPORTED_MEDIA_TYPE"),
    "unsupported_image": (None, "/v1/segment", {"Content-Type": "image/gif"}, GOOD, 415, "UNSUPPORTED_MEDIA_TYPE"),
    "v2_queue_full": (
        _refuse_queue,
        "/v2/models/fake/infer",
        {"Content-Type": "application/json"},
        b"{}",
        429,
        "QUEUE_FULL",
    ),
    "v2_too_large": (None, "/v2/models/fake/versions/1/infer", {}, b"{" * (MAX_BODY + 1), 413, "PAYLOAD_TOO_LARGE"),
}


def _answer(early: bool, name: str) -> tuple[int, dict, dict[str, str], str]:
    setup, path, headers, body, _, _ = CASES[name]
    with client(FakeBackend(), early_rejection=early, max_body_bytes=MAX_BODY) as c:
        wait_ready(c)
        if setup is not None:
            setup(c)
        response = c.post(path, content=body, headers={**headers, "X-Request-ID": "req-1"})
        kept = {k: response.headers[k] for k in ("retry-after", "connection", "x-request-id") if k in response.headers}
        return response.status_code, response.json(), kept, c.get("/metrics").text


@pytest.mark.parametrize("name", sorted(CASES))
def test_early_rejection_answers_as_the_route_does(name: str) -> None:
    status, code = CASES[name][4], CASES[name][5]
    early = _answer(True, name)
    late = _answer(False, name)
    assert early[0] == late[0] == status
    assert early[1] == late[1]
    path = CASES[name][1]
    if path.startswith("/v1"):
        assert early[1]["error"]["code"] == code and early[1]["request_id"] == "req-1"
    else:
        assert set(early[1]) == {"error"}  # the KServe v2 error shape
    assert early[2] == late[2]
    reason = f'{{reason="{code.lower()}"}}'
    assert metric(early[3], "faseg_rejections_total", reason) == metric(late[3], "faseg_rejections_total", reason) == 1
    endpoint = path if path.startswith("/v1") else path.replace("/fake/", "/{model}/").replace("/1/", "/{version}/")
    labels = f'{{code="{status}",endpoint="{endpoint}"}}'
    assert metric(early[3], "faseg_requests_total", labels) == metric(late[3], "faseg_requests_total", labels) == 1


def test_refusal_comes_before_routing_and_parameter_parsing() -> None:
    with client(FakeBackend()) as c:
        wait_ready(c)
        bad_params = "/v1/segment?outputs=nonsense"
        assert c.post(bad_params, content=GOOD, headers={"Content-Type": "image/png"}).status_code == 422
        refused = c.post(bad_params, content=GOOD, headers={"Content-Type": "text/plain"})
        assert refused.status_code == 415  # the route would have said 422: its parameters were never parsed
    with client(FakeBackend(), early_rejection=False) as c:
        wait_ready(c)
        assert c.post(bad_params, content=GOOD, headers={"Content-Type": "text/plain"}).status_code == 422


def test_unknown_v2_model_still_answers_404_with_a_full_queue() -> None:
    with client(FakeBackend()) as c:
        wait_ready(c)
        _refuse_queue(c)
        assert c.post("/v2/models/other/infer", content=b"{}").status_code == 404
        assert c.post("/v2/models/fake/versions/2/infer", content=b"{}").status_code == 404
