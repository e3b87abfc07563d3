"""Optional API-key authentication (plain ASGI, before routing and before the body is read).

Keys come from ``api_keys`` (``--api-keys`` / ``FASEG_API_KEYS``, comma-separated) and from
``api_keys_file`` (one key a line, ``#`` comments), which is re-read when its modification time or size
changes, so keys rotate without a restart: add the new key, move clients over, remove the old one. A client
sends a key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are compared as SHA-256
digests with ``hmac.compare_digest`` against every accepted key (no early exit), so neither the time taken
nor its variation tells how much of a guess was right. A request without a valid key gets 401 with a JSON
body and ``WWW-Authenticate: Bearer``. The probes (``/livez``, ``/readyz``, ``/v2/health/*``) and
``/metrics`` are exempt or not by setting; ``/docs`` and ``/openapi.json`` describe the API and stay public.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.config import Settings
from ..core.errors import ServiceError
from ..metrics import ServiceMetrics
from .errors import count_rejection, error_response

log = logging.getLogger(__name__)

HEALTH_PATHS = frozenset({"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"})
METRICS_PATHS = frozenset({"/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
BEARER = "bearer "
REALM = "faseg"


class Unauthorized(ServiceError):
    status, code = 401, "UNAUTHORIZED"

    def __init__(self, message: str, *, invalid: bool, close_connection: bool) -> None:
        super().__init__(message, close_connection=close_connection)
        self.invalid = invalid

    def headers(self) -> dict[str, str]:
        challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if self.invalid else "")
        return {**super().headers(), "WWW-Authenticate": challenge}


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file: one a line, blank lines and ``#`` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class ApiKeys:
    """The keys accepted now: the fixed ones plus the key file's, reloaded when the file changes. A file that
    disappears or cannot be read keeps its last keys (and is logged), so a botched rotation locks nobody out
    by accident."""

    def __init__(self, keys: Iterable[str], file: Path | None) -> None:
        self._fixed = [_digest(k) for k in keys]
        self._file = file
        self._file_keys: list[bytes] = []
        self._file_stamp: tuple[int, int] | None = None
        if file is not None:
            self._reload(initial=True)

    @property
    def enabled(self) -> bool:
        return bool(self._fixed) or self._file is not None

    def _reload(self, *, initial: bool = False) -> None:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._file_stamp:
                return
            keys = read_key_file(self._file)
        except OSError as exc:
            if initial:
                raise ValueError(f"cannot read the API key file {str(self._file)!r}: {exc}") from None
            if self._file_stamp is not None:
                log.error("cannot read the API key file %s (%s); keeping its last %d keys", self._file, exc,
                          len(self._file_keys))  # fmt: skip
                self._file_stamp = None
            return
        self._file_keys = [_digest(k) for k in keys]
        self._file_stamp = stamp
        log.info("API key file %s: %d keys", self._file, len(keys))

    def accepts(self, presented: str) -> bool:
        if self._file is not None:
            self._reload()
        digest = _digest(presented)
        found = False
        for key in (*self._fixed, *self._file_keys):
            found |= hmac.compare_digest(digest, key)
        return found


def presented_key(scope: Scope) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (the first found)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip()
        elif name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, *, keys: ApiKeys, exempt: frozenset[str], metrics: ServiceMetrics) -> None:
        self.app = app
        self.keys = keys
        self.exempt = exempt
        self.metrics = metrics

    @classmethod
    def exempt_paths(cls, settings: Settings) -> frozenset[str]:
        exempt = set(DOCS_PATHS)
        if settings.auth_exempt_health:
            exempt |= HEALTH_PATHS
        if settings.auth_exempt_metrics:
            exempt |= METRICS_PATHS
        return frozenset(exempt)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        if key and self.keys.accepts(key):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "invalid API key" if key else "an API key is required: send Authorization: Bearer <key> or X-API-Key",
            invalid=bool(key),
            close_connection=_has_body(scope),  # the body is never read
        )
        count_rejection(self.metrics, error)
        request_id = scope.get("state", {}).get("request_id")
        await error_response(error, request_id=request_id, path=scope["path"])(scope, receive, send)
