"""Running the service under uvicorn with a graceful drain.

On the first SIGTERM (or SIGINT) the server does not stop listening at once, as plain uvicorn would:
  1. readiness turns false and new work is answered 503 DRAINING (``/livez`` stays 200);
  2. after SIGTERM it keeps answering like that for ``drain_delay_s`` so load balancers deregister it;
  3. it waits up to ``drain_timeout_s`` for every admitted request (queued or running) to be answered;
  4. then uvicorn closes the listeners and connections, the lifespan stops the batcher and the backend,
     and the process exits 0.
A second signal cuts the drain short: every queued or running image is answered 503 DRAINING at once, the
server gives those answers ``ABORT_GRACE_S`` to go out, and the process exits 3 without waiting for a model
run in progress (its thread is not joined: a hung backend cannot hold the exit). If the model cannot be
loaded or warmed up the process exits 1; an unreadable API key file exits 2.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from . import memory_metrics
from .api.auth import read_key_file
from .backends import Backend, BackendError, load_backend
from .core.config import Settings
from .core.lifecycle import Lifecycle, Phase
from .main import create_app, effective_settings
from .repository import RepositoryError, scan_repository

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3  # a second signal cut the drain short
EXIT_MODEL_RUN_HUNG = 4  # drained, but a model run had not returned: exited without joining its thread
# After a second signal: time for the 503 answers of the work that was failed to be written.
ABORT_GRACE_S = 0.5


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._lifecycle: Lifecycle = app.state.lifecycle
        self._settings: Settings = app.state.settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._signalled = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's _captured_signals: uvicorn would re-raise it after shutdown and the
        # process would die of the signal instead of exiting 0.
        if self._loop is None:
            self.should_exit = True
            return
        if self._signalled:
            self._loop.call_soon_threadsafe(self._abort)
            return
        self._signalled = True
        delay = self._settings.drain_delay_s if sig == signal.SIGTERM else 0.0
        self._loop.call_soon_threadsafe(self._start_drain, delay)

    def _start_drain(self, delay_s: float) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(delay_s), name="faseg-drain")

    async def _drain(self, delay_s: float) -> None:
        self._lifecycle.begin_drain()
        log.info(
            "draining: readiness false; waiting %.1f s, then up to %.1f s for work in flight",
            delay_s,
            self._settings.drain_timeout_s,
        )
        if delay_s:
            await asyncio.sleep(delay_s)
        if not await self._lifecycle.wait_idle(self._settings.drain_timeout_s):
            log.warning("drain timeout: %d requests still in flight", self._lifecycle.active_requests)
        self.should_exit = True

    def _abort(self) -> None:
        if self._lifecycle.aborted:
            return
        log.warning("second signal: answering the work left with 503 and exiting")
        self._lifecycle.abort()
        runtime = self._app.state.runtime
        if runtime is not None:
            runtime.abort()
        asyncio.get_running_loop().call_later(ABORT_GRACE_S, _exit_now, EXIT_INTERRUPTED)

    @property
    def aborted(self) -> bool:
        return self._lifecycle.aborted

    @property
    def unfinished_runs(self) -> int:
        return self._lifecycle.unfinished_runs

    @property
    def failed(self) -> bool:
        return self._lifecycle.phase is Phase.FAILED

    async def on_tick(self, counter: int) -> bool:
        if self._lifecycle.phase is Phase.FAILED:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(settings: Settings, backend: Backend | None = None) -> DrainingServer:
    app = create_app(settings, backend=backend)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=max(1, math.ceil(settings.keep_alive_s)),
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout_s)),
        lifespan="on",
        server_header=False,
    )
    return DrainingServer(config, app)


def run(settings: Settings | None = None, backend: Backend | None = None) -> int:
    """Load the model (or serve the already-loaded ``backend``), serve until drained, and return the process
    exit code (docs/service.md, "Exit codes"): 0 after a graceful drain, 1 when the model cannot be loaded or
    warmed up; 3 and 4 exit the process at once. Raises ``DefaultModelUnavailable`` when no model is given
    and the demo model cannot be produced."""
    settings = effective_settings(settings or Settings(), backend_given=backend is not None)
    _configure_logging(settings.log_level)
    memory_metrics.start_tracing(settings.tracemalloc)  # before the model loads, so its allocations count
    if settings.api_keys_file is not None:
        try:
            read_key_file(settings.api_keys_file)
        except OSError as exc:
            log.error("cannot read the API key file: %s", exc)
            return EXIT_USAGE
    try:
        if settings.model_repository is not None:  # its models load in the app (a broken one is not fatal)
            scan_repository(settings.model_repository)
        elif backend is None:
            backend = load_backend(settings)  # before binding: a bad model is one clear line, not a traceback
    except (BackendError, RepositoryError) as exc:
        log.error("cannot load the model: %s", exc)
        return EXIT_FAILED
    server = build_server(settings, backend)
    server.run()
    if server.aborted:
        _exit_now(EXIT_INTERRUPTED)  # the drain was cut short: no joining a model run still in progress
    if server.unfinished_runs:
        log.error("%d model run(s) never returned; exiting without waiting for them", server.unfinished_runs)
        _exit_now(EXIT_MODEL_RUN_HUNG)
    return EXIT_FAILED if server.failed else EXIT_OK


def _exit_now(code: int) -> None:
    """Exit without joining the inference threads or running the lifespan's shutdown: a model run in progress
    (or a hung one) must not hold the exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _configure_logging(level: str) -> None:
    package_logger = logging.getLogger("faseg")
    if not package_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    package_logger.setLevel(level.upper())
