"""``GET /v1/models``: the served model, its classes and the effective settings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...core.errors import ModelNotFound
from ...runtime import MODEL_VERSION, Runtime
from ..deps import LifecycleDep, RuntimeDep
from ..schemas import ERROR_RESPONSES, ErrorResponse, ModelDescription, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(runtime: Runtime, ready: bool) -> dict[str, Any]:
    return {
        **runtime.describe(),
        "version": MODEL_VERSION,
        "ready": ready,
        "settings": runtime.settings.model_dump(mode="json"),
    }


@router.get("", response_model=ModelList, responses={503: ERROR_RESPONSES[503]})
async def list_models(runtime: RuntimeDep, lifecycle: LifecycleDep) -> dict[str, Any]:
    """The served model (one per server), with backend, input buckets, classes and effective settings."""
    return {"models": [describe(runtime, lifecycle.ready)]}


@router.get(
    "/{model}",
    response_model=ModelDescription,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}, 503: ERROR_RESPONSES[503]},
)
async def get_model(model: str, runtime: RuntimeDep, lifecycle: LifecycleDep) -> dict[str, Any]:
    """One model by name."""
    if model != runtime.backend.model_name:
        raise ModelNotFound(f"no model named {model!r}; this server serves {runtime.backend.model_name!r}")
    return describe(runtime, lifecycle.ready)
