"""Admission at the ASGI layer (plain ASGI, no ``BaseHTTPMiddleware``) for the image routes
(``POST /v1/segment``, ``/v1/segment:batch``, ``/v2/models/{m}[/versions/{v}]/infer``):

- **cheap rejection**: a request the route would refuse from its headers alone is answered here, before
  routing, query parsing, body read or decode, with the route's own error (same status, JSON body,
  ``Retry-After``, metrics). Checked in the route's order: not ready / draining / unhealthy (503), queue
  full (429), unsupported ``Content-Type`` (415, ``/v1`` only), ``Content-Length`` over ``max_body_bytes``
  (413). The routes keep every check: this layer only answers earlier what they would answer anyway
  (``early_rejection`` off leaves it all to them, for benchmarks/rejection_cost.py);
- **body deadline**: the whole body must arrive within ``body_timeout_s`` of the request's start, else the
  request fails with 408 ``REQUEST_TIMEOUT`` (a slow upload never reaches the batch queue: images are
  queued only after their body is complete).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.config import Settings
from ..core.errors import ServiceError, UnsupportedMediaType
from ..core.lifecycle import Lifecycle
from ..metrics import ServiceMetrics
from ..runtime import Runtime
from .body import MULTIPART, RAW_IMAGE_TYPES, check_declared_length, media_type
from .errors import count_rejection, error_response

# Route templates, as the request counter labels them.
SEGMENT_ROUTES = {"/v1/segment": "/v1/segment", "/v1/segment:batch": "/v1/segment:batch"}
V2_INFER = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
V2_INFER_ROUTE = "/v2/models/{model}/infer"
V2_INFER_VERSION_ROUTE = "/v2/models/{model}/versions/{version}/infer"
# Where the admission layer leaves the route template for the request counter (scope["state"]).
ENDPOINT_STATE_KEY = "endpoint"


class RequestTimeout(ServiceError):
    """The body did not arrive within ``body_timeout_s``."""

    status, code = 408, "REQUEST_TIMEOUT"


def unsupported_media_type(kind: str) -> UnsupportedMediaType | None:
    """The 415 that ``read_images`` raises for a ``Content-Type``, or None when it accepts the type."""
    if kind == MULTIPART or kind in RAW_IMAGE_TYPES or kind == "":
        return None
    if kind.startswith("image/"):
        return UnsupportedMediaType(f"{kind} is not accepted; send image/jpeg, image/png or image/webp")
    return UnsupportedMediaType(
        f"Content-Type {kind!r} is not accepted; send an image body or multipart/form-data field 'image'"
    )


class AdmissionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        lifecycle: Lifecycle,
        metrics: ServiceMetrics,
        runtime: Callable[[], Runtime | None],
    ) -> None:
        self.app = app
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        endpoint = SEGMENT_ROUTES.get(path)
        v2 = None if endpoint else V2_INFER.match(path)
        if v2 is not None:
            endpoint = V2_INFER_VERSION_ROUTE if v2["version"] is not None else V2_INFER_ROUTE
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        if self.settings.early_rejection:
            error = self._refusal(scope, v2)
            if error is not None:
                scope.setdefault("state", {})[ENDPOINT_STATE_KEY] = endpoint
                count_rejection(self.metrics, error)
                request_id = scope.get("state", {}).get("request_id")
                await error_response(error, request_id=request_id, path=path)(scope, receive, send)
                return
        await self.app(scope, _body_deadline(receive, self.settings.body_timeout_s), send)

    def _refusal(self, scope: Scope, v2: re.Match[str] | None) -> ServiceError | None:
        """The error the route would answer from the headers alone, or None."""
        try:
            self.lifecycle.check_admission()
        except ServiceError as error:
            return error
        runtime = self.runtime()
        if runtime is None:
            return None  # the route answers NOT_READY itself
        request = Request(scope)
        if v2 is not None:
            model, version = v2["model"], v2["version"]
        else:
            model, version = request.query_params.get("model"), request.query_params.get("version")
        try:
            target = runtime.registry.resolve(model or None, version or None)
        except ServiceError:
            return None  # the route answers 404 / 503 first
        try:
            target.check_room(1)
        except ServiceError as error:
            return error
        if v2 is None:
            kind, params = media_type(request)
            unsupported = unsupported_media_type(kind)
            if unsupported is not None:
                return unsupported
            if kind == MULTIPART and not params.get(b"boundary"):
                return None  # the route answers 400 before it looks at the length
        try:
            check_declared_length(request, self.settings.max_body_bytes)
        except ServiceError as error:
            return error
        return None


def _body_deadline(receive: Receive, timeout_s: float) -> Receive:
    """``receive`` raising ``RequestTimeout`` when the body is not complete ``timeout_s`` from now; once it
    is, messages pass through untouched (the disconnect watch waits on them without limit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    body_done = False

    async def receive_body() -> Message:
        nonlocal body_done
        if body_done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            body_done = True
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s", close_connection=True
            ) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            body_done = True
        return message

    return receive_body
