"""Dependencies as ``Annotated`` aliases, so route signatures read as types."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..core.config import Settings
from ..core.errors import NotReady
from ..core.lifecycle import NOT_READY_RETRY_AFTER_S, Lifecycle
from ..metrics import ServiceMetrics
from ..runtime import Runtime


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_runtime(request: Request) -> Runtime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("the model is still loading", retry_after_s=NOT_READY_RETRY_AFTER_S)
    return runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
