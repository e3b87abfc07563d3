"""Untrusted input: every bad request gets its documented 4xx/5xx JSON error, the server stays ready, and
``faseg_rejections_total`` counts each one by reason."""

from __future__ import annotations

import functools
import json
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image
from service_images import blocks_image, encode
from service_server import ServerFactory, ServerProcess

MAX_BODY_BYTES = 2_000_000
MAX_IMAGES = 4


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory("--max-body-bytes", str(MAX_BODY_BYTES), "--max-images-per-request", str(MAX_IMAGES))
    yield server
    server.stop()


@functools.cache
def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A complete, valid 1-bit greyscale PNG of width × height zero pixels: 400 MP (at least 400 MB once
    decoded to 8 bits), about 50 KB on the wire."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row_block = b"\0" * ((1 + (width + 7) // 8) * 500)  # 500 rows of (filter byte + 1-bit pixels)
    idat = b"".join(compressor.compress(row_block) for _ in range(height // 500)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raw_http(port: int, request: bytes, *, body_chunk: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (for requests httpx refuses to make) and read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + body_chunk)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            rest += sock.recv(65536)
        return int(lines[0].split()[1]), headers, rest


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[httpx.Client, ServerProcess], httpx.Response | tuple[int, dict[str, str], bytes]]
    status: int
    code: str


PNG = encode(blocks_image(64, 48), "PNG")
JPEG = encode(blocks_image(64, 48).convert("RGB"), "JPEG")


def _post(data: bytes, ctype: str | None = "image/png", params: str = "", path: str = "/v1/segment"):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": ctype} if ctype else {}
    return lambda c, _s: c.post(path + params, content=data, headers=headers)


def _files(files: list[tuple[str, tuple[str, bytes]]], params: str = "", path: str = "/v1/segment"):  # type: ignore[no-untyped-def]
    return lambda c, _s: c.post(path + params, files=files)


def _huge_content_length(_c: httpx.Client, s: ServerProcess) -> tuple[int, dict[str, str], bytes]:
    request = b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 99999999999\r\n\r\n"
    return raw_http(s.port, request, body_chunk=PNG[:100])


def _chunked_too_big(c: httpx.Client, _s: ServerProcess) -> httpx.Response:
    def body() -> Iterator[bytes]:
        for _ in range(5):
            yield b"\0" * 500_000

    return c.post("/v1/segment", content=body(), headers={"Content-Type": "image/png"})


def _multipart_unterminated(c: httpx.Client, _s: ServerProcess) -> httpx.Response:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + PNG
    return c.post("/v1/segment", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"})


GIF = encode(Image.new("P", (8, 8)), "GIF")
BMP = encode(Image.new("RGB", (8, 8)), "BMP")
TIFF = encode(Image.new("RGB", (8, 8)), "TIFF")
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'

CASES = [
    Case("empty body", _post(b"", None), 400, "EMPTY_BODY"),
    Case("empty image/jpeg body", _post(b"", "image/jpeg"), 400, "EMPTY_BODY"),
    Case("zero-byte file", _files([("image", ("a.png", b""))]), 400, "EMPTY_BODY"),
    Case("truncated JPEG", _post(JPEG[: len(JPEG) // 2], "image/jpeg"), 400, "INVALID_IMAGE"),
    Case("corrupt PNG data", _post(PNG[:40] + b"\x00" * 200, "image/png"), 400, "INVALID_IMAGE"),
    Case("text sent as image/png", _post(b"hello, this is text", "image/png"), 400, "INVALID_IMAGE"),
    Case("multipart without boundary", _post(PNG, "multipart/form-data"), 400, "INVALID_REQUEST"),
    Case("unterminated multipart", _multipart_unterminated, 400, "INVALID_REQUEST"),
    Case(
        "20000x20000 PNG bomb",
        lambda c, _s: c.post("/v1/segment", content=png_bomb()),
        413,
        "IMAGE_TOO_LARGE",
    ),
    Case("huge Content-Length", _huge_content_length, 413, "PAYLOAD_TOO_LARGE"),
    Case("chunked body over the cap", _chunked_too_big, 413, "PAYLOAD_TOO_LARGE"),
    Case(
        "too many images",
        _files([("image", ("a.png", PNG))] * (MAX_IMAGES + 1), path="/v1/segment:batch"),
        413,
        "TOO_MANY_IMAGES",
    ),
    Case("GIF", _post(GIF, "image/gif"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("GIF bytes labelled image/png", _post(GIF, "image/png"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("BMP", _files([("image", ("a.bmp", BMP))]), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("TIFF", _post(TIFF, "application/octet-stream"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("SVG", _post(SVG, "image/svg+xml"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("SVG bytes labelled image/png", _post(SVG, "image/png"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("text/plain body", _post(b"hello", "text/plain"), 415, "UNSUPPORTED_MEDIA_TYPE"),
    Case("two files", _files([("image", ("a.png", PNG)), ("image", ("b.png", PNG))]), 422, "VALIDATION_ERROR"),
    Case("wrong field name", _files([("picture", ("a.png", PNG))]), 422, "VALIDATION_ERROR"),
    Case("negative timeout", _post(PNG, params="?timeout_ms=-5"), 422, "VALIDATION_ERROR"),
    Case("non-numeric timeout", _post(PNG, params="?timeout_ms=soon"), 422, "VALIDATION_ERROR"),
    Case("unknown output name", _post(PNG, params="?outputs=stats,mask"), 422, "VALIDATION_ERROR"),
    Case("bad output_size", _post(PNG, params="?output_size=huge"), 422, "VALIDATION_ERROR"),
    Case("wrong method", lambda c, _s: c.get("/v1/segment"), 405, "METHOD_NOT_ALLOWED"),
    Case("timeout below the minimum", _post(PNG, params="?timeout_ms=5"), 422, "VALIDATION_ERROR"),
]


def _status_and_body(result: httpx.Response | tuple[int, dict[str, str], bytes]) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    if isinstance(result, httpx.Response):
        return result.status_code, dict(result.headers), result.json()
    status, headers, body = result
    return status, headers, json.loads(body)


def _rejections(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {
        m[1]: float(m[2]) for m in re.finditer(r'^faseg_rejections_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M)
    } | {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_documented_error(case: Case, client: httpx.Client, server: ServerProcess) -> None:
    status, headers, body = _status_and_body(case.send(client, server))
    assert (status, body["error"]["code"]) == (case.status, case.code), body
    assert body["error"]["message"]
    assert headers["x-request-id"] and body["request_id"] == headers["x-request-id"]


def test_server_stays_ready_and_counts_every_rejection(client: httpx.Client, server: ServerProcess) -> None:
    assert len(CASES) >= 15
    before = _rejections(client)
    for case in CASES:
        status, _, _ = _status_and_body(case.send(client, server))
        assert status == case.status, case.name
    after = _rejections(client)
    expected: dict[str, int] = {}
    for case in CASES:
        expected[case.code.lower()] = expected.get(case.code.lower(), 0) + 1
    assert {reason: after.get(reason, 0) - before.get(reason, 0) for reason in expected} == expected
    assert client.get("/readyz").status_code == 200
    ok = client.post("/v1/segment", content=PNG, headers={"Content-Type": "image/png"})
    assert ok.status_code == 200
