"""Readiness and admission: which phase the service is in and how much admitted work is still running.

Phases: ``starting`` (model loading, warm-up) → ``ready`` → ``draining`` (after SIGTERM / SIGINT) and
``failed`` (warm-up raised; the server exits). Work is admitted only while ``ready``; admitted requests
are counted until their response is built, so a drain can wait for exactly them.
Used from the event loop only.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Draining, NotReady

NOT_READY_RETRY_AFTER_S = 5
DRAINING_RETRY_AFTER_S = 1


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.failure: BaseException | None = None
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def active_requests(self) -> int:
        return self._active

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def mark_failed(self, exc: BaseException) -> None:
        self.failure = exc
        self.phase = Phase.FAILED

    def begin_drain(self) -> None:
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING

    def check_admission(self) -> None:
        """Raise the 503 that a new request gets now, if any."""
        if self.phase is Phase.DRAINING:
            raise Draining("the server is shutting down", retry_after_s=DRAINING_RETRY_AFTER_S)
        if self.phase is not Phase.READY:
            raise NotReady(f"the model is not ready ({self.phase.value})", retry_after_s=NOT_READY_RETRY_AFTER_S)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one work request from admission until its response is built; 503 when not admitting."""
        self.check_admission()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is left; False if ``timeout_s`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
