"""Error answers. Native routes: ``{"error": {"code", "message"}, "request_id"}``; KServe v2 routes
(``/v2/...``): ``{"error": "<message>"}`` as the Open Inference Protocol specifies. Every error except
internal ones is counted in ``faseg_rejections_total`` by its code."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import HTTPError, InvalidParameter, ServiceError
from ..metrics import ServiceMetrics

log = logging.getLogger(__name__)

V2_PREFIX = "/v2"
CLIENT_DISCONNECTED = "CLIENT_DISCONNECTED"


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_body(error: ServiceError, *, request_id: str | None, v2: bool) -> dict[str, Any]:
    if v2:
        return {"error": error.message}
    detail: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.retry_after_s is not None:
        detail["retry_after_s"] = error.retry_after_s
    return {"error": detail, "request_id": request_id}


def error_response(error: ServiceError, *, request_id: str | None, path: str) -> JSONResponse:
    return JSONResponse(
        error_body(error, request_id=request_id, v2=is_v2(path)),
        status_code=error.status,
        headers=error.headers(),
    )


def count_rejection(metrics: ServiceMetrics, error: ServiceError) -> None:
    if error.code == CLIENT_DISCONNECTED:
        metrics.client_disconnects.inc()
    if error.status < 500 or error.status in (503, 504):
        metrics.rejections.labels(error.reason).inc()


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "header", "body"))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request parameters"


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        count_rejection(metrics, exc)
        return error_response(exc, request_id=_request_id(request), path=request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return await on_service_error(request, InvalidParameter(_validation_message(exc)))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = HTTPError(exc.status_code, str(exc.detail))
        count_rejection(metrics, error)
        response = error_response(error, request_id=_request_id(request), path=request.url.path)
        response.headers.update(exc.headers or {})
        return response

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
