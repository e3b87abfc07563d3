"""``GET /v1/models``: every served model version, its input buckets, classes and the effective settings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...core.errors import ModelNotFound
from ...model_version import ServedVersion
from ...runtime import Runtime
from ..deps import LifecycleDep, RuntimeDep
from ..schemas import ERROR_RESPONSES, ErrorResponse, ModelDescription, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


def describe(runtime: Runtime, served: ServedVersion, ready: bool) -> dict[str, Any]:
    return {
        **runtime.describe(served),
        "ready": ready and served.ready,
        "settings": runtime.settings.model_dump(mode="json"),
    }


@router.get("", response_model=ModelList, responses={503: ERROR_RESPONSES[503]})
async def list_models(runtime: RuntimeDep, lifecycle: LifecycleDep) -> dict[str, Any]:
    """Every model version in memory (by name, then version), with backend, input buckets ("HxW" in
    ``bucket_names``), classes, state and effective settings."""
    return {"models": [describe(runtime, served, lifecycle.ready) for served in runtime.registry.served()]}


@router.get(
    "/{model}",
    response_model=ModelDescription,
    responses={404: {"model": ErrorResponse, "description": "Unknown model"}, 503: ERROR_RESPONSES[503]},
)
async def get_model(model: str, runtime: RuntimeDep, lifecycle: LifecycleDep) -> dict[str, Any]:
    """One model by name: its highest ready version."""
    slot = runtime.registry.models.get(model)
    if slot is None or not slot.versions:
        raise ModelNotFound(f"no model named {model!r}; models: {sorted(runtime.registry.models)}")
    ready = slot.ready_versions()
    served = ready[0] if ready else slot.versions[max(slot.versions, key=int)]
    return describe(runtime, served, lifecycle.ready)
