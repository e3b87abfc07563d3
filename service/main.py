"""The app factory: settings in, FastAPI app out. Heavy things (backend, pools, batcher) are created in
the lifespan, after the server started; warm-up runs in the background so ``/livez`` answers at once
and ``/readyz`` turns 200 only when every bucket × batch size has run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

import faseg

from . import memory_metrics
from .api.admission import AdmissionMiddleware
from .api.auth import ApiKeyMiddleware, ApiKeys
from .api.errors import install_error_handlers
from .api.middleware import RequestContextMiddleware
from .api.routes import health, metrics, models, repository, segment, ui, v2, v2_models
from .backends import Backend
from .core.config import Settings
from .core.default_model import resolve_default_model
from .core.lifecycle import Lifecycle
from .imaging.preprocess import configure_pillow
from .metrics import ServiceMetrics
from .runtime import Runtime

log = logging.getLogger(__name__)

CORS_METHODS = ["GET", "POST"]
CORS_REQUEST_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"]
CORS_RESPONSE_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "Server-Timing",
    "X-Model",
    "X-Model-Version",
    "X-Bucket",
    "X-Backend",
    "X-Output-Size",
]


def effective_settings(settings: Settings, *, backend_given: bool = False) -> Settings:
    """Resolve the default model (unless a backend object is injected) and the derived values."""
    default_model = None
    if settings.model is None and settings.model_repository is None and not backend_given:
        default_model = resolve_default_model(settings.cache_dir)
    return settings.effective(default_model)


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """Build the service. ``backend`` injects an already-loaded backend (tests, embedding); otherwise the
    lifespan loads the one ``settings`` describe. Nothing heavy happens here: without a model in ``settings``,
    the bundled demo model is resolved (and exported on first use) in the lifespan."""
    settings = settings or Settings()
    if settings.model is not None or settings.model_repository is not None or backend is not None:
        settings = effective_settings(settings, backend_given=backend is not None)  # cheap: no default model
    service_metrics = ServiceMetrics()
    lifecycle = Lifecycle()
    service_metrics.ready.set_function(lambda: float(lifecycle.ready))
    service_metrics.in_flight.set_function(lambda: float(lifecycle.active_requests))
    memory_metrics.start_tracing(settings.tracemalloc)
    memory_metrics.register(service_metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(settings.max_image_pixels)
        try:
            effective = settings
            if (
                effective.model is None and effective.model_repository is None and backend is None
            ):  # may export the demo model: off the event loop
                effective = await asyncio.to_thread(effective_settings, settings)
                app.state.settings = effective
            runtime = await Runtime.start(effective, service_metrics, backend)
        except Exception as exc:
            log.error("cannot start the model: %s", exc)
            raise
        app.state.runtime = runtime
        lifecycle.watch_health(lambda: _stall(runtime, settings.stall_timeout_s))
        warm_up = asyncio.create_task(_warm_up(runtime, lifecycle), name="faseg-warmup")
        try:
            yield
        finally:
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            lifecycle.unfinished_runs = await runtime.close(effective.drain_timeout_s)
            app.state.runtime = None

    app = FastAPI(
        title="FASeg segmentation service",
        version=faseg.__version__,
        description="Semantic segmentation over HTTP: the /v1 API and KServe v2 (Open Inference Protocol).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = service_metrics
    app.state.lifecycle = lifecycle
    app.state.runtime = None
    install_error_handlers(app, service_metrics)
    _add_middleware(app, settings, lifecycle, service_metrics)
    for module in (segment, models, health, metrics, v2, v2_models, repository):
        app.include_router(module.router)
    if settings.ui:
        app.include_router(ui.router)
    return app


def _add_middleware(app: FastAPI, settings: Settings, lifecycle: Lifecycle, metrics: ServiceMetrics) -> None:
    """From the outside in: request id and counting → CORS → API key → admission → routes (the last added
    runs first)."""
    app.add_middleware(
        AdmissionMiddleware,
        settings=settings,
        lifecycle=lifecycle,
        metrics=metrics,
        runtime=lambda: app.state.runtime,
    )
    keys = ApiKeys([k.get_secret_value() for k in settings.api_keys], settings.api_keys_file)
    if keys.enabled:
        app.add_middleware(ApiKeyMiddleware, keys=keys, exempt=ApiKeyMiddleware.exempt_paths(settings), metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=CORS_METHODS,
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)


def _stall(runtime: Runtime, stall_timeout_s: float) -> str | None:
    running_s = runtime.longest_run_s()
    if running_s <= stall_timeout_s:
        return None
    return f"a model run has not returned for {running_s:.0f} s (stall_timeout_s {stall_timeout_s:g})"


async def _warm_up(runtime: Runtime, lifecycle: Lifecycle) -> None:
    try:
        seconds = await runtime.warm_up()
    except Exception as exc:
        log.exception("warm-up failed; the server will exit")
        lifecycle.mark_failed(exc)
        return
    if not any(v.ready for v in runtime.registry.served()):
        log.error("no model version could be loaded; the server will exit")
        lifecycle.mark_failed(RuntimeError("no model version is ready"))
        return
    log.info("warm-up done in %.2f s; ready", seconds)
    lifecycle.mark_ready()
