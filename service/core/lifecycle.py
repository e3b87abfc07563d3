"""Readiness and admission: which phase the service is in and how much admitted work is still running.

Phases: ``starting`` (model loading, warm-up) → ``ready`` → ``draining`` (after SIGTERM / SIGINT) and
``failed`` (warm-up raised; the server exits). Work is admitted only while ``ready`` and healthy; admitted
requests are counted until their response is built, so a drain can wait for exactly them.
Health is a check the runtime installs (``watch_health``): while it reports a problem (a model run stuck
past ``stall_timeout_s``) the server is not ready and new work gets 503 ``BACKEND_STALLED``; readiness
comes back by itself when the problem is gone. Used from the event loop only.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import Draining, NotReady, ServiceError
from .inflight import InFlight

log = logging.getLogger(__name__)

NOT_READY_RETRY_AFTER_S = 5
DRAINING_RETRY_AFTER_S = 1
STALLED_RETRY_AFTER_S = 5


class BackendStalled(ServiceError):
    """A model run has not returned within ``stall_timeout_s``: the instance is unhealthy."""

    status, code = 503, "BACKEND_STALLED"


def _healthy() -> str | None:
    return None


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Lifecycle:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.failure: BaseException | None = None
        self._in_flight = InFlight()
        self._health: Callable[[], str | None] = _healthy
        self._unhealthy: str | None = None  # the problem last seen, to log each change once
        self.aborted = False  # a second signal cut the drain short
        self.unfinished_runs = 0  # model runs that had not returned when the service closed

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and self.problem() is None

    def watch_health(self, check: Callable[[], str | None]) -> None:
        """Install the health check: None when healthy, else what is wrong (one sentence)."""
        self._health = check

    def problem(self) -> str | None:
        """What makes the instance unhealthy now (None when healthy); logs when that changes."""
        problem = self._health()
        if problem != self._unhealthy:
            if problem is None:
                log.warning("healthy again: %s is over", self._unhealthy)
            else:
                log.error("unhealthy, not ready: %s", problem)
            self._unhealthy = problem
        return problem

    @property
    def active_requests(self) -> int:
        return self._in_flight.count

    def mark_ready(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.READY

    def mark_failed(self, exc: BaseException) -> None:
        self.failure = exc
        self.phase = Phase.FAILED

    def begin_drain(self) -> None:
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING

    def abort(self) -> None:
        """A second signal: stop waiting for work (the caller fails what is left with 503)."""
        self.begin_drain()
        self.aborted = True

    def check_admission(self) -> None:
        """Raise the 503 that a new request gets now, if any."""
        if self.phase is Phase.DRAINING:
            raise Draining("the server is shutting down", retry_after_s=DRAINING_RETRY_AFTER_S)
        if self.phase is not Phase.READY:
            raise NotReady(f"the model is not ready ({self.phase.value})", retry_after_s=NOT_READY_RETRY_AFTER_S)
        problem = self.problem()
        if problem is not None:
            raise BackendStalled(problem, retry_after_s=STALLED_RETRY_AFTER_S)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one work request from admission until its response is built; 503 when not admitting."""
        self.check_admission()
        with self._in_flight.hold():
            yield

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted request is left; False if ``timeout_s`` passed first."""
        return await self._in_flight.wait_idle(timeout_s)
