"""Run TensorRT engines built by ``faseg export trt``: plugin library, engine, I/O buffers, execution.

Meant for the service's TensorRT backend and for tests; nothing imports ``tensorrt`` at module import.
Written against TensorRT's public Python API (10.x, name-based tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). CUDA memory and streams are torch's (the service
already depends on torch); host staging buffers are pinned torch tensors.

Not exercised on the development machines: TensorRT's libraries cannot be installed there
(PyPI's ``tensorrt-cu12-libs`` only points at NVIDIA's own index);
``tests/export/test_tensorrt.py`` runs it where they can.

Typical use::

    engine = TensorRTEngine.load("model.plan")          # loads the FASeg plugin library first
    buffers = engine.allocate(engine.max_batch_size)    # device + pinned host tensors per I/O name
    outputs = engine.infer({"images": batch_uint8_nhwc}, buffers)   # numpy in, numpy out

or, with tensors already on the GPU, ``engine.execute_async({name: tensor, ...}, stream)``.

The plugin library registers its creators through ``getCreators`` when TensorRT's plugin registry
loads it (:func:`load_plugin_library`); loading it with ``ctypes.CDLL`` alone registers nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .contract import ContractError, OutOfDeviceMemory, TensorInfo, check_serving_io
from .native_library import BUILD_DIR, NativeLibrary
from .session import SessionError, read_metadata

PLUGIN_LIBRARY_ENV = "FASEG_TRT_PLUGINS_LIB"
PLUGIN_LIBRARY_NAME = "libfaseg_trt_plugins.so"
BUILD_COMMAND = "export/plugins/build_cuda.sh"
PLUGIN_LIBRARY = NativeLibrary(
    name=PLUGIN_LIBRARY_NAME,
    env=PLUGIN_LIBRARY_ENV,
    defaults=(BUILD_DIR / "cuda" / "tensorrt" / PLUGIN_LIBRARY_NAME,),
    build_command=BUILD_COMMAND,
    needs="on a machine with nvcc",
)


class TensorRTUnavailableError(RuntimeError):
    """TensorRT, a GPU or the plugin library is missing; the message says which and what to do."""


class TensorRTRuntimeError(RuntimeError):
    """An engine could not be loaded or run."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or TensorRTUnavailableError with the reason."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: bindings present, libnvinfer missing
        raise TensorRTUnavailableError(
            f"cannot import tensorrt ({type(exc).__name__}: {exc}); install TensorRT 10+ with its Python "
            "bindings (NVIDIA's wheels or container), see docs/tensorrt.md"
        ) from exc
    return tensorrt


def unavailable_reason() -> str | None:
    """Why engines cannot run here (no tensorrt, no CUDA device), or None."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as exc:
        return str(exc)
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__})"
    return None


def plugin_library_path() -> Path | None:
    """``$FASEG_TRT_PLUGINS_LIB`` when set (even if missing: the caller reports it), else the repo build."""
    return PLUGIN_LIBRARY.override() or PLUGIN_LIBRARY.find()


_plugin_lock = threading.Lock()
_loaded_plugins: dict[Path, Any] = {}
_logger: Any = None


def trt_logger(severity: str = "WARNING") -> Any:
    """One process-wide ``trt.Logger`` (TensorRT keeps the first logger it is given)."""
    global _logger
    trt = import_tensorrt()
    if _logger is None:
        _logger = trt.Logger(getattr(trt.Logger, severity.upper()))
    return _logger


def load_plugin_library(path: str | Path | None = None) -> Path:
    """Register FASeg's plugin creators (and NVIDIA's standard plugins) with TensorRT's registry.

    ``path`` defaults to :func:`plugin_library_path`. Idempotent per resolved path. Returns the path.
    Raises TensorRTUnavailableError when no library is found, TensorRTRuntimeError when TensorRT
    refuses it.
    """
    trt = import_tensorrt()
    if path is None:
        path = plugin_library_path()
        if path is None:
            raise TensorRTUnavailableError(PLUGIN_LIBRARY.missing_message())
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise TensorRTUnavailableError(f"TensorRT plugin library {resolved} does not exist")
    with _plugin_lock:
        if resolved in _loaded_plugins:
            return resolved
        trt.init_libnvinfer_plugins(trt_logger(), "")
        handle = trt.get_plugin_registry().load_library(str(resolved))
        if handle is None:
            raise TensorRTRuntimeError(f"TensorRT's plugin registry could not load {resolved}")
        _loaded_plugins[resolved] = handle
    return resolved


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    for name, torch_dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = torch_dtype
    if dtype not in table:
        raise TensorRTRuntimeError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor. ``shape`` has -1 for dynamic dims; ``profile`` is (min, opt, max) of
    optimisation profile 0 for inputs, None for outputs."""

    name: str
    is_input: bool
    dtype: Any  # torch.dtype
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None


@dataclass
class IOBuffers:
    """Device tensors (shaped for ``batch_size``) and pinned host mirrors, keyed by tensor name."""

    batch_size: int
    device: dict[str, Any]
    host: dict[str, Any]


def read_engine_metadata(engine_path: Path) -> dict[str, str]:
    """The ``faseg.*`` metadata of an engine: the ``<engine stem>.json`` sidecar written by ``faseg export trt``,
    else the metadata of the ``<engine stem>.onnx`` it was built from, else empty."""
    sidecar = Path(engine_path).with_suffix(".json")
    if sidecar.is_file():
        try:
            raw = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise TensorRTRuntimeError(f"{str(sidecar)!r} is not JSON: {exc}") from exc
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
    onnx_file = Path(engine_path).with_suffix(".onnx")
    if onnx_file.is_file():
        try:
            return read_metadata(onnx_file)
        except SessionError as exc:
            raise TensorRTRuntimeError(str(exc)) from exc
    return {}


class TensorRTEngine:
    """A deserialized engine with one execution context and one CUDA stream: use it from one thread at a time
    (the service's ``Settings`` refuse ``--instances`` > 1 with TensorRT)."""

    def __init__(self, engine: Any, *, metadata: Mapping[str, str] | None = None, device: int = 0):
        import torch

        self._trt = import_tensorrt()
        self._torch = torch
        self.engine = engine
        self.device = torch.device("cuda", device)
        self.metadata = dict(metadata or {})
        self._runtime: Any = None  # set by load(): the runtime must outlive the engine
        self._buffers: IOBuffers | None = None  # infer()'s own buffers, grown to the largest batch seen
        self.stream = torch.cuda.Stream(self.device)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise TensorRTRuntimeError("TensorRT could not create an execution context (out of device memory?)")
        self.specs: dict[str, TensorSpec] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT
            shape = tuple(engine.get_tensor_shape(name))
            profile = None
            if is_input and any(d < 0 for d in shape):
                lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                profile = (tuple(lo), tuple(opt), tuple(hi))
            elif is_input:
                profile = (shape, shape, shape)  # static input
            self.specs[name] = TensorSpec(
                name=name,
                is_input=is_input,
                dtype=_torch_dtype(self._trt, engine.get_tensor_dtype(name)),
                shape=shape,
                profile=profile,
            )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        plugin_libraries: Iterable[str | Path] | None = None,
        device: int = 0,
    ) -> TensorRTEngine:
        """Deserialize ``path`` after loading the plugin libraries.

        ``plugin_libraries=None`` loads :func:`plugin_library_path` when one exists (FASeg's plugin
        engines need it; portable engines do not); pass ``[]`` to load none.
        """
        import torch

        trt = import_tensorrt()
        path = Path(path)
        if not path.is_file():
            raise TensorRTRuntimeError(f"TensorRT engine {path} does not exist")
        if plugin_libraries is None:
            default = plugin_library_path()
            plugin_libraries = [default] if default is not None and default.is_file() else []
        for library in plugin_libraries:
            load_plugin_library(library)
        trt.init_libnvinfer_plugins(trt_logger(), "")
        with torch.cuda.device(device):
            runtime = trt.Runtime(trt_logger())
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TensorRTRuntimeError(
                f"TensorRT could not deserialize {path} (built by another TensorRT version or for another GPU, "
                f"or a plugin library is missing: {PLUGIN_LIBRARY_ENV})"
            )
        instance = cls(engine, metadata=read_engine_metadata(path), device=device)
        instance._runtime = runtime
        return instance

    @property
    def inputs(self) -> list[TensorSpec]:
        return [s for s in self.specs.values() if s.is_input]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [s for s in self.specs.values() if not s.is_input]

    @property
    def max_batch_size(self) -> int:
        """Largest leading dim allowed by profile 0 of the first input."""
        return int(self.inputs[0].profile[2][0])

    def check_serving_io(self) -> tuple[int, int] | None:
        """Check the engine's I/O against the serving contract; its fixed (H, W), or None when dynamic."""

        def info(spec: TensorSpec) -> TensorInfo:
            dtype = str(spec.dtype).removeprefix("torch.")
            return TensorInfo(dtype=dtype, shape=tuple(d if d >= 0 else None for d in spec.shape))

        try:
            return check_serving_io({s.name: info(s) for s in self.inputs}, {s.name: info(s) for s in self.outputs})
        except ContractError as exc:
            raise TensorRTRuntimeError(f"engine: {exc}") from exc

    def _input_shape(self, spec: TensorSpec, batch_size: int) -> tuple[int, ...]:
        _, _, hi = spec.profile
        return (batch_size, *[hi[i] if d < 0 else d for i, d in enumerate(spec.shape)][1:])

    def allocate(self, batch_size: int | None = None, *, pinned: bool = True) -> IOBuffers:
        """Device buffers for every I/O tensor at ``batch_size`` (default: the profile maximum) and
        pinned host mirrors. Other dynamic input dims take the profile maximum."""
        torch = self._torch
        batch_size = batch_size or self.max_batch_size
        for spec in self.inputs:
            self.context.set_input_shape(spec.name, self._input_shape(spec, batch_size))
        device, host = {}, {}
        for spec in self.specs.values():
            shape = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise TensorRTRuntimeError(f"output {spec.name} has a data-dependent shape {shape}")
            device[spec.name] = torch.empty(shape, dtype=spec.dtype, device=self.device)
            host[spec.name] = torch.empty(shape, dtype=spec.dtype, pin_memory=pinned)
        return IOBuffers(batch_size=batch_size, device=device, host=host)

    def execute_async(self, tensors: Mapping[str, Any], stream: Any | None = None) -> None:
        """Enqueue one inference on ``stream`` (a torch.cuda.Stream; default: the current stream).

        ``tensors`` maps every I/O name to a contiguous CUDA tensor of the right dtype; input shapes
        are taken from the input tensors, outputs must be large enough for the resulting shapes.
        """
        torch = self._torch
        stream = stream or torch.cuda.current_stream(self.device)
        for spec in self.inputs:
            tensor = tensors[spec.name]
            if not self.context.set_input_shape(spec.name, tuple(tensor.shape)):
                raise TensorRTRuntimeError(
                    f"input {spec.name} shape {tuple(tensor.shape)} is outside the engine's profile {spec.profile}"
                )
        for name, spec in self.specs.items():
            tensor = tensors[name]
            if tensor.dtype != spec.dtype or not tensor.is_cuda or not tensor.is_contiguous():
                raise TensorRTRuntimeError(f"tensor {name} must be a contiguous CUDA {spec.dtype} tensor")
            if not spec.is_input:
                need = tuple(self.context.get_tensor_shape(name))
                if tensor.numel() < int(np.prod(need)):
                    raise TensorRTRuntimeError(f"output {name} buffer too small for shape {need}")
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise TensorRTRuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def infer(self, inputs: Mapping[str, Any], buffers: IOBuffers | None = None) -> dict[str, np.ndarray]:
        """Copy numpy/CPU inputs through pinned buffers, run on the engine's stream, and return the outputs as
        numpy arrays. Without ``buffers`` the engine's own are used (allocated once, grown when a batch needs
        it). Raises :class:`~faseg.export.contract.OutOfDeviceMemory` when the batch does not fit."""
        torch = self._torch
        batch = int(next(iter(inputs.values())).shape[0])
        try:
            if buffers is None:
                if self._buffers is None or self._buffers.batch_size < batch:
                    self._buffers = self.allocate(max(batch, 1))
                buffers = self._buffers
            elif buffers.batch_size < batch:
                buffers = self.allocate(max(batch, 1))
            results = self._enqueue(inputs, buffers, batch)
            self.stream.synchronize()
        except torch.cuda.OutOfMemoryError as exc:
            torch.cuda.empty_cache()
            raise OutOfDeviceMemory(str(exc)) from exc
        return {name: host.numpy().copy() for name, host in results.items()}

    def _enqueue(self, inputs: Mapping[str, Any], buffers: IOBuffers, batch: int) -> dict[str, Any]:
        """Host → device copies, execution and device → host copies on ``self.stream``; the host tensors."""
        torch = self._torch
        bound: dict[str, Any] = {}
        with torch.cuda.stream(self.stream):
            for spec in self.inputs:
                value = inputs[spec.name]
                value = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
                host = buffers.host[spec.name][:batch]
                host.copy_(value.reshape(host.shape))
                device = buffers.device[spec.name][:batch]
                device.copy_(host, non_blocking=True)
                bound[spec.name] = device
            for spec in self.inputs:
                self.context.set_input_shape(spec.name, tuple(bound[spec.name].shape))
            for spec in self.outputs:
                shape = tuple(self.context.get_tensor_shape(spec.name))
                bound[spec.name] = buffers.device[spec.name].view(-1)[: int(np.prod(shape))].view(shape)
            self.execute_async(bound, self.stream)
            results = {}
            for spec in self.outputs:
                out = bound[spec.name]
                host = buffers.host[spec.name].view(-1)[: out.numel()].view(out.shape)
                host.copy_(out, non_blocking=True)
                results[spec.name] = host
        return results

    def close(self) -> None:
        self._buffers = None
        self.context = None
        self.engine = None


__all__ = [
    "PLUGIN_LIBRARY_ENV",
    "PLUGIN_LIBRARY_NAME",
    "IOBuffers",
    "TensorRTEngine",
    "TensorRTRuntimeError",
    "TensorRTUnavailableError",
    "TensorSpec",
    "import_tensorrt",
    "load_plugin_library",
    "plugin_library_path",
    "read_engine_metadata",
    "trt_logger",
    "unavailable_reason",
]
