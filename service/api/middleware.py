"""Request middleware (plain ASGI, so it never buffers bodies or wraps ``receive``): gives every request an
``X-Request-ID`` (the client's when it is sane), counts requests by route and status, and is the last
error boundary, so even an unexpected exception answers JSON with the request id."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import InternalError
from ..metrics import ServiceMetrics
from .admission import ENDPOINT_STATE_KEY
from .errors import error_response

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
UNMATCHED_ROUTE = "unmatched"
# Logged and counted when the client went away before any answer was sent (nginx's convention).
CLIENT_CLOSED_STATUS = 499


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
        request_id = incoming if _SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.monotonic()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status is None:
                response = error_response(
                    InternalError("internal server error"), request_id=request_id, path=scope["path"]
                )
                await response(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # Requests refused before routing (.admission) leave their route template in the state.
            endpoint = getattr(route, "path", None) or scope["state"].get(ENDPOINT_STATE_KEY, UNMATCHED_ROUTE)
            code = str(status if status is not None else CLIENT_CLOSED_STATUS)
            self.metrics.requests.labels(endpoint, code).inc()
            self.metrics.request_duration.labels(endpoint).observe(time.monotonic() - started)
