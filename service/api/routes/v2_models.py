"""KServe v2 routes of one pinned model version: ``/v2/models/{m}/versions/{v}/config`` and ``/stats``.

They answer what the unversioned routes of :mod:`.v2` answer, for the named version (tritonclient's
``get_model_config(m, v)`` and ``get_inference_statistics(m, v)`` call them); a version that is not served is a 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..deps import MetricsDep, RuntimeDep
from .v2 import V2_ERRORS, ModelName, ModelVersion, _check_model, _config

router = APIRouter(prefix="/v2", tags=["kserve-v2"])


@router.get(
    "/models/{model}/versions/{version}/config",
    summary="Model configuration of one version (Triton's shape)",
    responses=V2_ERRORS,
)
async def model_version_config(model: ModelName, version: ModelVersion, runtime: RuntimeDep) -> dict[str, Any]:
    return _config(runtime, _check_model(runtime, model, version))


@router.get(
    "/models/{model}/versions/{version}/stats",
    summary="Model statistics of one version (Triton's shape)",
    responses=V2_ERRORS,
)
async def model_version_stats(
    model: ModelName, version: ModelVersion, runtime: RuntimeDep, metrics: MetricsDep
) -> dict[str, Any]:
    served = _check_model(runtime, model, version)
    return {"model_stats": [metrics.stats(served.name, served.version).as_json(served.name, served.version)]}
