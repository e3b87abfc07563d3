"""KServe v2 model-repository extension, as tritonclient calls it (``get_model_repository_index``,
``load_model``, ``unload_model``): ``POST /v2/repository/index``, ``/v2/repository/models/{m}/load`` and
``/unload``. Loading returns once the new versions are ready (or failed: 400 with the error, the serving
version left in place) and the versions they replace have drained and closed."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from ...core.errors import InvalidRequest, ModelNotFound
from ..body import read_body
from ..deps import RuntimeDep
from ..schemas import V2ErrorResponse

router = APIRouter(prefix="/v2/repository", tags=["kserve-v2-repository"])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2ErrorResponse} for code in (400, 404, 503)}
ModelName = Annotated[str, Path(description="Model name (a directory of the repository)")]
MAX_CONTROL_BODY_BYTES = 64 * 1024
ACCEPTED_PARAMETERS = frozenset({"unload_dependents"})


async def _no_overrides(request: Request) -> None:
    """tritonclient sends ``{}`` to load and ``{"parameters": {"unload_dependents": ...}}`` to unload (a model
    here has no dependents); ``config`` and file overrides are refused."""
    body = await read_body(request, MAX_CONTROL_BODY_BYTES)
    if not body.strip():
        return
    try:
        parsed = json.loads(body)
    except ValueError:
        raise InvalidRequest("the body must be a JSON object") from None
    parameters = parsed.get("parameters", {}) if isinstance(parsed, dict) else None
    if not isinstance(parameters, dict) or set(parsed) - {"parameters"}:
        raise InvalidRequest('the body must be {} or {"parameters": {...}}')
    overrides = sorted(set(parameters) - ACCEPTED_PARAMETERS)
    if overrides:
        raise InvalidRequest(f"parameters {overrides} are not supported (no config or file overrides)")


@router.post("/index", summary="Repository index: every model and version with its state", responses=ERRORS)
async def index(runtime: RuntimeDep) -> list[dict[str, Any]]:
    return runtime.registry.index()


@router.post("/models/{model}/load", summary="Load (or reload) a model's highest versions", responses=ERRORS)
async def load(model: ModelName, request: Request, runtime: RuntimeDep) -> JSONResponse:
    await _no_overrides(request)
    registry = runtime.registry
    if registry.repository is None:
        raise InvalidRequest("this server serves a fixed model (--model); start it with --model-repository")
    problems = await registry.load(model)
    slot = registry.models.get(model)
    serving = slot.ready_versions() if slot is not None else []
    if not serving:
        raise InvalidRequest(f"failed to load model {model!r}: {'; '.join(problems) or 'no version loaded'}")
    if problems:
        versions = [v.version for v in serving]
        raise InvalidRequest(f"model {model!r} keeps serving versions {versions}; {'; '.join(problems)}")
    return JSONResponse({})


@router.post("/models/{model}/unload", summary="Unload every version of a model", responses=ERRORS)
async def unload(model: ModelName, request: Request, runtime: RuntimeDep) -> JSONResponse:
    await _no_overrides(request)
    if runtime.registry.repository is None:
        raise InvalidRequest("this server serves a fixed model (--model); start it with --model-repository")
    if model not in runtime.registry.models:
        raise ModelNotFound(f"model {model!r} is not loaded; loaded models: {sorted(runtime.registry.models)}")
    await runtime.registry.unload(model)
    return JSONResponse({})
