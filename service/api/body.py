"""Request intake: reading image uploads from untrusted request bodies, and the one flow every work route
(``/v1/segment``, ``/v1/segment:batch``, ``/v2/models/{model}/infer``) runs, :func:`segment_request`::

    admit (lifecycle) → room check (batcher) → read (the route's reader) → room check for N images
        → prepare (decode + letterbox) → watch for disconnect → segment (queue → infer → render)

Accepted: a raw ``image/jpeg|png|webp`` (or ``application/octet-stream``) body, or ``multipart/form-data``
with the image(s) in field ``image``. The byte cap is checked against ``Content-Length`` before anything
is read, then again on every streamed chunk (chunked uploads have no length). Multipart is parsed while
it streams, into memory (the cap bounds it), never spooled to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..core.errors import (
    ClientDisconnected,
    EmptyBody,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    TooManyImages,
    UnsupportedMediaType,
)
from ..core.lifecycle import Lifecycle
from ..model_version import ServedVersion
from ..pipeline import PreparedImage, RenderedImage, SegmentOptions

IMAGE_FIELD = "image"
MULTIPART = "multipart/form-data"
RAW_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "application/octet-stream"})
# Non-image parts tolerated beside the images (clients add things like a JSON blob); more is abuse.
MAX_OTHER_PARTS = 16


def media_type(request: Request) -> tuple[str, dict[bytes, bytes]]:
    raw, params = parse_options_header(request.headers.get("content-type", ""))
    return raw.decode("latin-1").strip().lower(), params


def check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body declares {declared} bytes; the limit is {max_bytes}", close_connection=True)


async def _chunks(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks as they stream, refusing more than ``max_bytes`` in total."""
    check_declared_length(request, max_bytes)
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise PayloadTooLarge(f"the body exceeds the limit of {max_bytes} bytes", close_connection=True)
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnected("the client disconnected while sending the body") from None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing more than ``max_bytes``."""
    return b"".join([chunk async for chunk in _chunks(request, max_bytes)])


async def read_images(request: Request, *, max_bytes: int, max_images: int) -> list[bytes]:
    """The encoded images of a request (``max_images`` == 1: exactly one, else 1..max_images)."""
    kind, params = media_type(request)
    if kind == MULTIPART:
        return await _read_multipart(request, params, max_bytes=max_bytes, max_images=max_images)
    if kind in RAW_IMAGE_TYPES or kind == "":
        body = await read_body(request, max_bytes)
        if not body:
            raise EmptyBody("the request has no image: send image bytes or multipart field 'image'")
        return [body]
    if kind.startswith("image/"):
        raise UnsupportedMediaType(f"{kind} is not accepted; send image/jpeg, image/png or image/webp")
    raise UnsupportedMediaType(
        f"Content-Type {kind!r} is not accepted; send an image body or multipart/form-data field 'image'"
    )


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    data: bytearray = field(default_factory=bytearray)


class _MultipartCollector:
    """python-multipart callbacks that keep parts in memory and enforce the part limits as they arrive."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.parts: list[_Part] = []
        self.images = 0
        self.finished = False
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> dict[str, Callable[..., Any]]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._part = _Part()
        self.parts.append(self._part)
        if len(self.parts) > self.max_images + MAX_OTHER_PARTS:
            raise InvalidParameter(f"too many multipart parts (more than {self.max_images + MAX_OTHER_PARTS})")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.data += data[start:end]

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._part.headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._part.name == IMAGE_FIELD:
            self.images += 1
            if self.images > self.max_images:
                if self.max_images == 1:
                    raise InvalidParameter(
                        "this endpoint takes one file in field 'image'; use /v1/segment:batch for more"
                    )
                raise TooManyImages(f"at most {self.max_images} images per request")

    def _on_end(self) -> None:
        self.finished = True


async def _read_multipart(
    request: Request, params: dict[bytes, bytes], *, max_bytes: int, max_images: int
) -> list[bytes]:
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/form-data without a boundary")
    check_declared_length(request, max_bytes)
    collector = _MultipartCollector(max_images)
    try:
        parser = MultipartParser(boundary, collector.callbacks())
    except FormParserError as exc:
        raise InvalidRequest(f"bad multipart boundary: {exc}") from None
    try:
        async for chunk in _chunks(request, max_bytes):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    if not collector.finished:
        raise InvalidRequest("the multipart body ends before its closing boundary")
    images = [bytes(p.data) for p in collector.parts if p.name == IMAGE_FIELD]
    if not images:
        found = sorted({p.name for p in collector.parts})
        raise InvalidParameter(f"multipart field 'image' is missing (found fields: {found})")
    return images


@contextlib.contextmanager
def watch_disconnect(receive: Callable[[], Awaitable[dict[str, Any]]]) -> Iterator[asyncio.Task[None]]:
    """A task that completes when the client disconnects, cancelled on leaving the block. Enter it only
    after the body was read: the server then answers ``receive`` with nothing but ``http.disconnect``."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.get_running_loop().create_task(wait(), name="faseg-disconnect-watch")
    try:
        yield task
    finally:
        task.cancel()


@dataclass(frozen=True)
class SegmentJob:
    """What a route read from its request: the encoded images and how to segment them (routes may subclass
    it to carry what they need to build the answer)."""

    images: list[bytes]
    options: SegmentOptions
    timeout_ms: int | None


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a request: its decoded form (or the error that stopped it) and its answer (or error)."""

    prepared: PreparedImage | ServiceError
    answer: RenderedImage | ServiceError


Job = TypeVar("Job", bound=SegmentJob)


async def segment_request(
    request: Request,
    target: ServedVersion,
    lifecycle: Lifecycle,
    read: Callable[[], Awaitable[Job]],
    *,
    fail_fast: bool,
    check_prepared: Callable[[Job, list[PreparedImage]], None] | None = None,
) -> tuple[Job, list[ImageOutcome]]:
    """Run one work request through the service: the job ``read`` returned and one outcome per image.

    The request is admitted (503 when not ready or draining) and counted until this returns; the queue is
    checked for room before the body is read (429 sheds load early) and again for all its images. With
    ``fail_fast`` the first image error is raised (the request fails as a whole), otherwise every image gets
    its own outcome. ``check_prepared`` may refuse the decoded images before they are queued. A client that
    disconnects before its answers are ready gets ``ClientDisconnected`` and its queued images never run.
    ``target`` is the model version the route resolved; it is counted as in use until this returns, so
    unloading it waits for the request.
    """
    started = time.monotonic()
    pipeline = target.pipeline
    with lifecycle.admit(), target.admit():
        target.check_room(1)  # shed load before reading the body
        job = await read()
        target.check_room(len(job.images), job.options.bucket)
        slots = await pipeline.prepare_all(job.images, job.options, started)
        if fail_fast:
            _raise_first_error(slots)
        ready = [slot for slot in slots if isinstance(slot, PreparedImage)]
        if check_prepared is not None:
            check_prepared(job, ready)
        answers: list[RenderedImage | ServiceError] = []
        if ready:
            with watch_disconnect(request.receive) as disconnected:
                answers = await pipeline.segment(
                    ready,
                    job.options,
                    started=started,
                    deadline=pipeline.deadline(started, job.timeout_ms),
                    disconnected=disconnected,
                )
        if fail_fast:
            _raise_first_error(answers)
    answer_iter = iter(answers)
    outcomes = [ImageOutcome(slot, next(answer_iter) if isinstance(slot, PreparedImage) else slot) for slot in slots]
    return job, outcomes


def _raise_first_error(values: Sequence[object]) -> None:
    for value in values:
        if isinstance(value, ServiceError):
            raise value
