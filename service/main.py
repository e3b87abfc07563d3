"""The app factory: settings in, FastAPI app out. Heavy things (backend, pools, batcher) are created in
the lifespan, after the server started; warm-up runs in the background so ``/livez`` answers at once
and ``/readyz`` turns 200 only when every bucket × batch size has run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import faseg

from .api.errors import install_error_handlers
from .api.middleware import RequestContextMiddleware
from .api.routes import health, metrics, models, segment, v2, v2_models
from .backends import Backend
from .core.config import Settings
from .core.default_model import resolve_default_model
from .core.lifecycle import Lifecycle
from .imaging.decode import configure_pillow
from .metrics import ServiceMetrics
from .runtime import Runtime

log = logging.getLogger(__name__)


def effective_settings(settings: Settings, *, backend_given: bool = False) -> Settings:
    """Resolve the default model (unless a backend object is injected) and the derived values."""
    default_model = None
    if settings.model is None and not backend_given:
        default_model = resolve_default_model(settings.cache_dir)
    return settings.effective(default_model)


def create_app(settings: Settings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """Build the service. ``backend`` injects an already-loaded backend (tests, embedding); otherwise the
    lifespan loads the one ``settings`` describe."""
    settings = effective_settings(settings or Settings(), backend_given=backend is not None)
    service_metrics = ServiceMetrics()
    lifecycle = Lifecycle()
    service_metrics.ready.set_function(lambda: float(lifecycle.ready))
    service_metrics.in_flight.set_function(lambda: float(lifecycle.active_requests))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(settings.max_image_pixels)
        try:
            runtime = await Runtime.start(settings, service_metrics, backend)
        except Exception as exc:
            log.error("cannot start the model: %s", exc)
            raise
        app.state.runtime = runtime
        warm_up = asyncio.create_task(_warm_up(runtime, lifecycle), name="faseg-warmup")
        try:
            yield
        finally:
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            await runtime.close(settings.drain_timeout_s)
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
    app.add_middleware(RequestContextMiddleware, metrics=service_metrics)
    for module in (segment, models, health, metrics, v2, v2_models):
        app.include_router(module.router)
    return app


async def _warm_up(runtime: Runtime, lifecycle: Lifecycle) -> None:
    try:
        seconds = await runtime.warm_up()
    except Exception as exc:
        log.exception("warm-up failed; the server will exit")
        lifecycle.mark_failed(exc)
        return
    log.info("warm-up done in %.2f s; ready", seconds)
    lifecycle.mark_ready()
