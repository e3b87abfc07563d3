"""Dependencies as ``Annotated`` aliases, so route signatures read as types.

They are ``async def`` although they never await: FastAPI runs a plain ``def`` dependency in its worker thread
pool, a thread hop (and wake-up) per dependency per request, which on a CPU server takes time from the model.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..core.config import Settings
from ..core.errors import NotReady
from ..core.lifecycle import NOT_READY_RETRY_AFTER_S, Lifecycle
from ..metrics import ServiceMetrics
from ..runtime import Runtime


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("the model is still loading", retry_after_s=NOT_READY_RETRY_AFTER_S)
    return runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
