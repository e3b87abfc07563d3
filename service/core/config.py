"""Service settings: one pydantic-settings ``Settings``, read from ``FASEG_*`` environment variables.

Command-line flags override the environment (``faseg.service.cli`` passes them as init arguments, which
pydantic-settings ranks above the environment). Settings are created by the caller (CLI, tests, app
factory), never at import. ``Settings.effective()`` fills the values that depend on others (backend from
the model path, queue delay from the device) so that ``GET /v1/models`` can show what is really in force.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
DeviceName = Literal["cpu", "cuda"]
Precision = Literal["fp32", "fp16", "bf16"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
KernelMode = Literal["auto", "on", "off"]

MiB = 1024 * 1024
# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS default (2 × 89,478,485); a larger
# cap would switch that last guard off, so it is the ceiling for ours.
PILLOW_BOMB_ERROR_PIXELS = 178_956_970
# Batching on a GPU pays for a short wait; on a CPU it rarely does (Triton's guidance).
DEFAULT_QUEUE_DELAY_MS = {"cpu": 0.0, "cuda": 2.0}
ONNX_SUFFIXES = (".onnx",)
# Shorter keys can be guessed; 16 characters is what `openssl rand -hex 8` gives.
MIN_API_KEY_LENGTH = 16
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/faseg, else ~/.cache/faseg."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "faseg"


def infer_backend(model: Path) -> BackendName:
    """The backend a model path implies: a directory is a torch checkpoint, ``.onnx`` runs on ONNX Runtime,
    ``.plan`` / ``.engine`` / ``.trt`` is a serialized TensorRT engine."""
    suffix = model.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if model.is_dir() or not suffix:
        return "torch"
    raise ValueError(
        f"cannot tell the backend from model path {str(model)!r}: expected a checkpoint directory, "
        f"a {'/'.join(ONNX_SUFFIXES)} file or a {'/'.join(ENGINE_SUFFIXES)} TensorRT engine"
    )


def _split_list(value: object) -> object:
    """``"a,b"`` (a flag or an environment variable) → ``("a", "b")``; blanks dropped."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _safe_model_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._")[:128]
    return name or "model"


class Settings(BaseSettings):
    """Everything `faseg serve` can be told. Environment ``FASEG_<NAME>``, flag ``--<name-with-dashes>``."""

    model_config = SettingsConfigDict(
        env_prefix="FASEG_", extra="forbid", frozen=True, protected_namespaces=(), validate_default=True
    )

    # --- model and backend ---------------------------------------------------------------------------
    model: Path | None = Field(
        None,
        description="Torch checkpoint directory, .onnx file or TensorRT .plan/.engine. "
        "Unset: the bundled demo model (exported to ONNX and cached on first start).",
    )
    model_repository: Path | None = Field(
        None,
        description="Model repository DIR/<model>/<version>/<one file per input bucket> (docs/service.md, "
        "'Model repository'); instead of --model.",
    )
    poll_repository_s: float | None = Field(
        None, gt=0, le=86_400, description="Re-read the model repository this often and reload what changed."
    )
    backend: BackendName | None = Field(None, description="Inference backend. Unset: implied by --model.")
    device: DeviceName = Field("cpu", description="Device to run the model on.")
    precision: Precision = Field(
        "fp32",
        description="torch: autocast dtype on CUDA; onnxruntime TensorRT EP: fp16 builds fp16 engines.",
    )
    kernels: KernelMode = Field(
        "auto",
        description="torch backend: FASeg's fused CUDA kernels (auto: on CUDA when the kernel library is built; "
        "on: fail if they cannot run; off: PyTorch references). GET /v1/models reports the path.",
    )
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
        description="Name in /v1 and /v2. Unset: file stem.",
    )
    plugin_library: Path | None = Field(
        None, description="TensorRT plugin library (.so) loaded before the engine is deserialized."
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Engine caches and the exported demo model ($XDG_CACHE_HOME/faseg or ~/.cache/faseg).",
    )
    intra_op_threads: int = Field(
        0, ge=0, le=1024, description="Threads inside one model run (0: the library's default)."
    )
    graph_optimization: GraphOptimization = Field("all", description="ONNX Runtime graph optimisation level.")

    # --- network --------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", min_length=1, description="Interface to bind.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    limit_concurrency: int | None = Field(
        None, ge=1, description="uvicorn's connection limit (answers 503 above it); keep it above the queue."
    )
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="Idle keep-alive timeout.")
    log_level: LogLevel = Field("info", description="Log level.")
    access_log: bool = Field(True, description="Log one line per request.")
    ui: bool = Field(True, description="Serve the demo page at / and /ui (turn it off in production).")

    # --- dynamic batcher (Triton semantics) -----------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, le=1024, description="Most images in one model run.")
    instances: int = Field(
        1,
        ge=1,
        le=64,
        description="Model runs in flight at once on the one loaded model (Triton's instance count). On cpu, "
        "intra_op_threads 0 then means cores // instances. Not with tensorrt (one execution context).",
    )
    max_queue_delay_ms: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="How long the oldest queued image may wait for a fuller batch. Unset: 0 on cpu, 2 on cuda.",
    )
    max_queue_size: int = Field(
        64, ge=1, le=1_000_000, description="Images that may wait; more answers 429 with Retry-After."
    )
    default_timeout_ms: int = Field(
        10_000, ge=1, le=3_600_000, description="Request deadline; a request's timeout_ms can only lower it."
    )
    warmup: bool = Field(True, description="Run every bucket × batch size once before /readyz turns 200.")

    # --- untrusted input ------------------------------------------------------------------------------
    max_body_bytes: int = Field(
        20 * MiB, ge=1024, le=1024 * MiB, description="Request body cap (Content-Length and streamed bytes)."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, le=PILLOW_BOMB_ERROR_PIXELS, description="Pixel cap, checked from the image header."
    )
    max_images_per_request: int = Field(16, ge=1, le=1024, description="Most images in one batch request.")
    jpeg_draft: bool = Field(
        True, description="Decode large JPEGs at a reduced DCT scale no smaller than the model input."
    )

    # --- worker pools and outputs ---------------------------------------------------------------------
    decode_threads: int = Field(4, ge=1, le=256, description="Threads decoding and letterboxing images.")
    encode_threads: int = Field(4, ge=1, le=256, description="Threads post-processing and encoding outputs.")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level of label PNGs.")
    overlay_alpha: float = Field(0.5, ge=0, le=1, description="Weight of the class colours in overlays.")
    overlay_quality: int = Field(85, ge=1, le=95, description="JPEG quality of overlays.")

    # --- lifecycle ------------------------------------------------------------------------------------
    drain_delay_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description="After SIGTERM: answer 503 this long before waiting on work, so "
        "load balancers deregister the instance (SIGINT skips it).",
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="After the delay: how long queued and in-flight work may take."
    )

    # --- reliability and access (docs/service.md, "Overload, faults and access") -------------------------
    early_rejection: bool = Field(
        True,
        description="Answer refusals known from the headers alone (queue full, draining, not ready, body too "
        "large, unsupported type) in the ASGI layer, before routing; off only to measure what it saves.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="The whole request body must arrive within this time, else 408."
    )
    stall_timeout_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="A model run taking longer marks the server unhealthy (/readyz 503 BACKEND_STALLED, new work "
        "refused) until it returns.",
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="API keys (comma-separated); set: requests need one as a bearer token or X-API-Key."
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys, one a line ('#' comments); re-read when it changes (rotation)."
    )
    auth_exempt_health: bool = Field(True, description="/livez, /readyz and /v2/health/* answer without a key.")
    auth_exempt_metrics: bool = Field(True, description="/metrics answers without a key.")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Origins allowed by CORS (comma-separated; '*' for any); none: no CORS headers."
    )
    tracemalloc: bool = Field(
        False,
        description="Trace Python allocations and report the Python heap in /metrics (faseg_python_heap_bytes); "
        "costs CPU, for soak runs.",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, keys: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for key in keys:
            if len(key.get_secret_value()) < MIN_API_KEY_LENGTH:
                raise ValueError(f"an API key must have at least {MIN_API_KEY_LENGTH} characters")
        return keys

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.model is not None and self.model_repository is not None:
            raise ValueError("give --model or --model-repository, not both")
        if self.poll_repository_s is not None and self.model_repository is None:
            raise ValueError("poll_repository_s needs model_repository")
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("precision fp16 needs device cuda")
        backend = self.backend
        if self.model is not None:
            implied = infer_backend(self.model)
            if backend is not None and backend != implied:
                raise ValueError(f"backend {backend!r} cannot run model {str(self.model)!r} (a {implied} model)")
            backend = implied
        if self.kernels == "on" and backend is not None and backend != "torch":
            raise ValueError(f"kernels 'on' applies to the torch backend only, not {backend}")
        if backend == "tensorrt" and self.device != "cuda":
            raise ValueError("backend tensorrt needs device cuda")
        if backend == "tensorrt" and self.instances > 1:
            raise ValueError("backend tensorrt runs one batch at a time (one execution context): instances must be 1")
        if self.limit_concurrency is not None and self.limit_concurrency <= self.max_queue_size:
            raise ValueError(
                "limit_concurrency must exceed max_queue_size, or uvicorn's 503s would hide the queue's 429s"
            )
        return self

    def effective(self, default_model: Path | None = None) -> Settings:
        """A copy with every derived value filled in: the model path (``default_model`` when unset),
        the backend it implies, the model name, the queue delay for the device and, with several instances on
        cpu, the intra-op threads of each."""
        model = self.model if self.model is not None else default_model
        updates: dict[str, object] = {}
        if model is not None:
            updates["model"] = model
            if self.backend is None:
                updates["backend"] = infer_backend(model)
            if self.model_name is None:
                updates["model_name"] = _safe_model_name(model.stem if model.suffix else model.name)
        if self.max_queue_delay_ms is None:
            updates["max_queue_delay_ms"] = DEFAULT_QUEUE_DELAY_MS[self.device]
        if self.device == "cpu" and self.instances > 1 and self.intra_op_threads == 0:
            # concurrent runs share the cores: each gets its share instead of every core
            updates["intra_op_threads"] = max(1, (os.cpu_count() or 1) // self.instances)
        return self.model_copy(update=updates) if updates else self

    @property
    def queue_delay_s(self) -> float:
        delay = self.max_queue_delay_ms
        return (DEFAULT_QUEUE_DELAY_MS[self.device] if delay is None else delay) / 1000.0
