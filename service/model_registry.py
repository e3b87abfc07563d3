"""The models a server serves, their versions and their (re)loading: Triton's repository API
(``POST /v2/repository/index``, ``/v2/repository/models/{m}/load`` and ``/unload``) and polling.

Loading a model reads its directory again and serves its ``num_versions`` highest versions: a new version
is loaded and warmed up (every bucket × batch size) before it turns ``READY`` and takes traffic; only then
do the versions it replaces stop taking new requests, finish the admitted ones and close. A version that
fails to load leaves the serving ones in place; its error is in the index and in
``faseg_model_load_failures``. Requests name a model and optionally a version; without a version they get
the highest ``READY`` one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, BackendError, load_backend
from .core.config import Settings, infer_backend
from .core.errors import ModelNotFound, NotReady
from .core.lifecycle import NOT_READY_RETRY_AFTER_S
from .metrics import ServiceMetrics
from .model_version import ServedVersion, VersionState
from .repository import (
    SINGLE_FILE_VERSION,
    ModelConfig,
    ModelSource,
    RepositoryError,
    read_model,
    scan_repository,
)

log = logging.getLogger(__name__)

LoadFiles = Callable[[str, tuple[Path, ...], ModelConfig], list[Backend]]


@dataclass
class ModelSlot:
    """One model name: its versions in memory and the errors of the versions that failed to load."""

    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # a problem of the model's directory itself (layout, config.json)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    signature: tuple[Any, ...] | None = None  # what the last load saw on disk (polling reloads on change)

    def ready_versions(self) -> list[ServedVersion]:
        return sorted((v for v in self.versions.values() if v.ready), key=lambda v: int(v.version), reverse=True)


def _signature(source: ModelSource) -> tuple[Any, ...]:
    files = []
    for version, paths in sorted(source.versions.items()):
        for path in paths:
            try:
                files.append((version, str(path), path.stat().st_mtime_ns))
            except OSError:
                files.append((version, str(path), None))
    return (source.error, source.config, tuple(files))


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        decode_pool: Executor,
        encode_pool: Executor,
        repository: Path | None,
        fixed: dict[str, ModelSource] | None = None,
        injected: Backend | None = None,
    ):
        """``repository``: a directory to (re)scan; else ``fixed`` models (``--model FILE``) or one
        ``injected`` backend (tests, embedding), neither of which can be reloaded."""
        self.settings = settings
        self.metrics = metrics
        self.repository = repository
        self._fixed = fixed or {}
        self._injected = injected
        self._decode_pool = decode_pool
        self._encode_pool = encode_pool
        self.models: dict[str, ModelSlot] = {}
        self._left_open: list[ServedVersion] = []  # unloaded versions with a model run that had not returned

    # --- what is on disk ---------------------------------------------------------------------------------

    def _scan(self) -> dict[str, ModelSource]:
        if self.repository is None:
            return dict(self._fixed)
        return scan_repository(self.repository)

    def _read(self, name: str) -> ModelSource | None:
        if self.repository is None:
            return self._fixed.get(name)
        return read_model(self.repository, name)

    # --- requests ----------------------------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        """The model of requests that name none: the first by name with a ready version, else the first."""
        if not self.models:
            raise NotReady("no model is loaded yet", retry_after_s=NOT_READY_RETRY_AFTER_S)
        ready = [name for name, slot in self.models.items() if slot.ready_versions()]
        return min(ready or self.models)

    def resolve(self, model: str | None, version: str | None = None) -> ServedVersion:
        """The version a request goes to: 404 for an unknown model or version (naming those available),
        503 when the model has no ready version."""
        name = model or self.default_model
        slot = self.models.get(name)
        if slot is None:
            raise ModelNotFound(f"unknown model {name!r}; available models: {sorted(self.models)}")
        ready = slot.ready_versions()
        if version:
            served = slot.versions.get(version)
            if served is None:
                available = [v.version for v in ready]
                raise ModelNotFound(f"model {name!r} has no version {version!r}; available versions: {available}")
            if not served.ready:
                raise NotReady(
                    f"model {name!r} version {version} is {served.state.value.lower()}",
                    retry_after_s=NOT_READY_RETRY_AFTER_S,
                )
            return served
        if not ready:
            problems = [slot.error] if slot.error else []
            problems += [f"version {v}: {e}" for v, e in slot.errors.items()]
            reason = "; ".join(problems) or "no version is loaded"
            raise NotReady(f"model {name!r} has no ready version ({reason})", retry_after_s=NOT_READY_RETRY_AFTER_S)
        return ready[0]

    def resolve_any(self) -> ServedVersion | None:
        """The highest version in memory of the first model (by name) that has one, ready or not."""
        names = sorted(self.models)
        for name in ([self.default_model] if names else []) + names:
            versions = self.models[name].versions
            if versions:
                return versions[max(versions, key=int)]
        return None

    def served(self) -> list[ServedVersion]:
        """Every version in memory, by model name then version."""
        return [v for name in sorted(self.models) for _, v in sorted(self.models[name].versions.items())]

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model on disk or in memory, one entry per version."""
        entries = []
        try:
            on_disk = self._scan()
        except RepositoryError as exc:
            log.warning("cannot read the model repository: %s", exc)
            on_disk = {}
        for name in sorted(set(on_disk) | set(self.models)):
            slot = self.models.get(name)
            source = on_disk.get(name)
            versions = set(source.versions if source else ()) | set(slot.versions if slot else ())
            versions |= set(slot.errors if slot else ())
            if not versions:
                reason = (source.error if source else None) or (slot.error if slot else None) or "not loaded"
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
            for version in sorted(versions, key=int):
                served = slot.versions.get(version) if slot else None
                error = slot.errors.get(version) if slot else None
                entry: dict[str, Any] = {"name": name, "version": version}
                if served is not None:
                    entry["state"] = served.state.value
                    entry["reason"] = ""
                else:
                    entry["state"] = "UNAVAILABLE"
                    entry["reason"] = error or "not loaded"
                entries.append(entry)
        return entries

    # --- loading -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model found (without warm-up; ``warm_up`` follows). With ``--model FILE`` or an injected
        backend, a load error is raised (the server does not start); in a repository it is recorded."""
        if self._injected is not None:
            backend = self._injected
            slot = self.models.setdefault(backend.model_name, ModelSlot(backend.model_name))
            slot.versions[SINGLE_FILE_VERSION] = self._build(
                backend.model_name, SINGLE_FILE_VERSION, [backend], slot.config
            )
            return
        for name, source in self._scan().items():
            await self._load_versions(name, source, warm=False, strict=self.repository is None)

    async def warm_up(self) -> float:
        """Warm up every loaded version and turn it ready; returns the seconds it took. A failing version is
        recorded (and dropped) in a repository; with one fixed model the error is raised."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for served in self.served():
            if served.state is not VersionState.LOADING:
                continue
            try:
                await served.warm_up()
            except Exception as exc:
                if self.repository is None:
                    raise
                await self._failed(served.name, served.version, exc, served)
                continue
            self._turn_ready(served)
        return loop.time() - started

    async def load(self, name: str) -> list[str]:
        """``POST /v2/repository/models/{name}/load``: (re)read the model's directory and serve its
        highest versions, replacing older ones only once a new one is ready. Returns the problems met."""
        source = self._read(name)
        if source is None:
            raise ModelNotFound(f"no model {name!r} in the repository; models: {sorted(self._scan())}")
        return await self._load_versions(name, source, warm=True, strict=False)

    async def unload(self, name: str) -> None:
        """``POST /v2/repository/models/{name}/unload``: every version stops taking requests, finishes the
        admitted ones (those past ``drain_timeout_s`` get 503) and closes."""
        slot = self.models.get(name)
        if slot is None:
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {sorted(self.models)}")
        async with slot.lock:
            await self._retire(slot, list(slot.versions))
            slot.signature = None

    async def poll(self, interval_s: float) -> None:
        """Reload every model whose files changed (``--poll-repository-s``), load new ones, unload removed
        ones; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                on_disk = self._scan()
            except RepositoryError as exc:
                log.warning("cannot poll the model repository: %s", exc)
                continue
            for name, source in on_disk.items():
                slot = self.models.get(name)
                if slot is None or slot.signature != _signature(source):
                    await self._load_versions(name, source, warm=True, strict=False)
            for name in set(self.models) - set(on_disk):
                if self.models[name].versions:
                    await self.unload(name)

    async def close(self, timeout_s: float) -> int:
        """Close every served version; returns the model runs that never returned (``ServedVersion.close``)."""
        unfinished = await asyncio.gather(*(v.close(timeout_s) for v in self.served()))
        for slot in self.models.values():
            slot.versions.clear()
        return sum(unfinished) + sum(v.unfinished_runs for v in self._left_open)

    def abort(self) -> None:
        for served in self.served():
            served.abort()

    # --- internals ---------------------------------------------------------------------------------------

    async def _load_versions(self, name: str, source: ModelSource, *, warm: bool, strict: bool) -> list[str]:
        """Load what ``source`` wants served; returns the problems met (empty when all went well)."""
        slot = self.models.setdefault(name, ModelSlot(name))
        async with slot.lock:
            slot.signature = _signature(source)
            if source.error is not None:
                if strict:
                    raise RepositoryError(source.error)
                log.error("model %s: %s", name, source.error)
                slot.error = source.error
                self.metrics.load_failures.labels(name, "").inc()
                return [source.error]
            slot.config = source.config
            slot.error = None
            wanted = source.wanted_versions()
            for version in wanted:
                current = slot.versions.get(version)
                if current is not None and current.state in (VersionState.READY, VersionState.LOADING):
                    continue
                slot.errors.pop(version, None)
                try:
                    served = await self._load_version(name, version, source.versions[version], source.config)
                except Exception as exc:
                    if strict:
                        raise
                    await self._failed(name, version, exc)
                    continue
                slot.versions[version] = served
                if warm:
                    try:
                        await served.warm_up()
                    except Exception as exc:
                        await self._failed(name, version, exc, served)
                        continue
                    self._turn_ready(served)
            if any(slot.versions[v].ready for v in wanted if v in slot.versions):
                await self._retire(slot, [v for v in slot.versions if v not in wanted])
            return [f"version {v}: {slot.errors[v]}" for v in wanted if v in slot.errors]

    async def _load_version(
        self, name: str, version: str, files: tuple[Path, ...], config: ModelConfig
    ) -> ServedVersion:
        settings = self.settings
        pool = ThreadPoolExecutor(config.instances or settings.instances, thread_name_prefix="faseg-infer")
        try:
            loop = asyncio.get_running_loop()
            backends = []
            for path in files:
                file_settings = self._file_settings(name, path, config)
                backends.append(await loop.run_in_executor(pool, load_backend, file_settings))
            return self._build(name, version, backends, config, pool)
        except BaseException:
            pool.shutdown(wait=False)
            raise

    def _file_settings(self, name: str, path: Path, config: ModelConfig) -> Settings:
        update: dict[str, Any] = {"model": path, "model_name": name}
        if self.repository is not None:
            update["backend"] = backend = infer_backend(path)
            if backend == "tensorrt" and (config.instances or self.settings.instances) > 1:
                raise BackendError(f"{path}: a TensorRT engine runs one batch at a time: instances must be 1")
            if backend == "tensorrt" and self.settings.device != "cuda":
                raise BackendError(f"{path}: a TensorRT engine needs --device cuda")
        if config.max_batch_size is not None:
            update["max_batch_size"] = config.max_batch_size
        return self.settings.model_copy(update=update)

    def _build(
        self,
        name: str,
        version: str,
        backends: list[Backend],
        config: ModelConfig,
        pool: ThreadPoolExecutor | None = None,
    ) -> ServedVersion:
        pool = pool or ThreadPoolExecutor(config.instances or self.settings.instances, thread_name_prefix="faseg-infer")
        served = ServedVersion(
            name,
            version,
            backends,
            config=config,
            settings=self.settings,
            metrics=self.metrics,
            infer_pool=pool,
            decode_pool=self._decode_pool,
            encode_pool=self._encode_pool,
        )
        served.start()
        return served

    def _turn_ready(self, served: ServedVersion) -> None:
        served.mark_ready()
        self.metrics.version_ready.labels(served.name, served.version).set(1)
        log.info("model %s version %s is ready (buckets %s)", served.name, served.version, served.buckets)

    async def _failed(self, name: str, version: str, exc: BaseException, served: ServedVersion | None = None) -> None:
        slot = self.models[name]
        slot.errors[version] = f"{type(exc).__name__}: {exc}"
        self.metrics.load_failures.labels(name, version).inc()
        log.error("model %s version %s failed to load: %s", name, version, exc)
        if served is not None:
            slot.versions.pop(version, None)
            await served.close(0.0)

    async def _retire(self, slot: ModelSlot, versions: list[str]) -> None:
        retiring = [slot.versions[v] for v in versions if v in slot.versions]
        for served in retiring:
            served.state = VersionState.UNLOADING  # no new requests from now on
            self.metrics.version_ready.labels(served.name, served.version).set(0)
        unfinished = await asyncio.gather(*(s.unload(self.settings.drain_timeout_s) for s in retiring))
        for served, runs in zip(retiring, unfinished, strict=True):
            slot.versions.pop(served.version, None)
            if runs:
                self._left_open.append(served)
            log.info("model %s version %s unloaded", served.name, served.version)
