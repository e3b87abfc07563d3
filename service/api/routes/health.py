"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...core.errors import ServiceError
from ..deps import LifecycleDep
from ..schemas import ErrorResponse, Status

router = APIRouter(tags=["health"])


@router.get("/livez", response_model=Status)
async def livez() -> dict[str, str]:
    """200 while the process serves HTTP, draining included."""
    return {"status": "alive"}


@router.get("/readyz", response_model=Status, responses={503: {"model": ErrorResponse}})
async def readyz(lifecycle: LifecycleDep) -> JSONResponse:
    """200 once every bucket × batch size is warmed up; 503 while starting, draining or failed.
    (Probes are not counted as rejections.)"""
    try:
        lifecycle.check_admission()
    except ServiceError as exc:
        body = {"error": {"code": exc.code, "message": exc.message}, "request_id": None}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers())
    return JSONResponse({"status": "ready"})
