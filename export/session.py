"""The ONNX Runtime session for files written by ``faseg export onnx``: the one that ``faseg verify``, the
benchmarks and the service's onnxruntime backend all run.

- **Providers**: TensorRT EP → CUDA EP → CPU, keeping those this onnxruntime build offers
  (:func:`choose_providers`). ``device="cpu"`` forces CPU; ``device="cuda"`` fails when neither GPU provider
  is installed; ``device="auto"`` takes whatever is there. The TensorRT EP caches engines and timing in
  ``trt_cache_dir``.
- **Threads / optimisation**: ``intra_op_threads`` (0 = ORT's default, one per physical core),
  ``inter_op_threads``, sequential execution, the graph optimisation level (``all`` by default), and
  ``allow_spinning``: ORT's intra-op threads spin-wait after every run by default, which starves the other
  threads of a server sharing the cores (the service turns it off on CPU, benchmarks/ort_spinning.py).
- **Custom ops**: a file whose ``faseg.flavour`` metadata is ``plugin`` gets ``libfaseg_ort_ops.so``
  registered before the session is created (:func:`faseg.export.custom_ops.register_custom_ops`); a missing
  library is a :class:`~faseg.export.custom_ops.CustomOpsLibraryNotFoundError` naming the build command.
- **I/O binding**: when the first provider is a GPU one, :meth:`OrtSession.run` binds the input once per call
  (host → device copy by ORT) and lets the outputs be allocated on the device, then copies them back; on CPU
  it calls ``session.run`` directly. (The GPU paths are written against onnxruntime-gpu's public API and are
  not exercised on the CPU-only development machines.)
- **Out of memory**: allocation failures of the BFC arena and the GPU providers become
  :class:`~faseg.export.contract.OutOfDeviceMemory`.
- **Threads**: ``InferenceSession.run`` may be called from several threads at once (ONNX Runtime documents
  it), so one :class:`OrtSession` serves several concurrent batches.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .contract import (
    PLUGIN_FLAVOUR,
    PORTABLE_FLAVOUR,
    ContractError,
    OutOfDeviceMemory,
    TensorInfo,
    check_serving_io,
    metadata_input_size,
)
from .custom_ops import register_custom_ops
from .metadata import META_FLAVOUR, META_PRECISION

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT_EP, CUDA_EP)
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
ALLOW_SPINNING_KEY = "session.intra_op.allow_spinning"
DEFAULT_TRT_CACHE_DIR = Path.home() / ".cache" / "faseg" / "ort-trt-engines"
# ONNX Runtime reports allocation failures as generic RuntimeExceptions; these are the messages of its
# BFC arena and of the CUDA / TensorRT providers.
_OOM_MESSAGE = re.compile(r"out of memory|failed to allocate memory|cudaErrorMemoryAllocation", re.IGNORECASE)


class SessionError(RuntimeError):
    """The ONNX file cannot be opened as asked."""


@dataclass(frozen=True)
class SessionConfig:
    device: str = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    #: False: intra-op threads sleep between runs instead of spin-waiting (for servers sharing the cores).
    allow_spinning: bool = True
    #: TensorRT EP engine / timing cache folder (None: ~/.cache/faseg/ort-trt-engines).
    trt_cache_dir: Path | None = None
    #: ORT profiling: a JSON trace per session is written with this file prefix (None: off).
    profile_prefix: str | None = None
    extra_options: dict[str, str] = field(default_factory=dict)  # SessionOptions.add_session_config_entry

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SessionError(f"unknown device {self.device!r}; choose from {', '.join(DEVICES)}")
        if self.graph_optimization not in OPTIMIZATION_LEVELS:
            raise SessionError(
                f"unknown graph optimisation level {self.graph_optimization!r}; "
                f"choose from {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise SessionError("thread counts must be ≥ 0 (0 = onnxruntime's default)")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read without creating a session (external data not loaded)."""
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ... for files that are not ONNX
        raise SessionError(f"cannot read ONNX model {str(path)!r}: {exc}") from exc
    return {p.key: p.value for p in proto.metadata_props}


def choose_providers(
    device: str, available: Sequence[str], *, precision: str = "fp32", trt_cache_dir: Path | None = None
) -> list[str | tuple[str, dict[str, Any]]]:
    """Provider list in priority order: TensorRT EP → CUDA EP → CPU (those in ``available``)."""
    if device not in DEVICES:
        raise SessionError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU_EP]
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if TENSORRT_EP in available:
        cache = Path(trt_cache_dir or DEFAULT_TRT_CACHE_DIR)
        providers.append(
            (
                TENSORRT_EP,
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True,
                    "trt_fp16_enable": precision == "fp16",
                },
            )
        )
    if CUDA_EP in available:
        providers.append(CUDA_EP)
    if device == "cuda" and not providers:
        raise SessionError(
            f"device cuda requested but this onnxruntime offers only {list(available)}; install onnxruntime-gpu"
        )
    providers.append(CPU_EP)
    return providers


def session_options(config: SessionConfig, *, plugin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[config.graph_optimization]
    if not config.allow_spinning:
        options.add_session_config_entry(ALLOW_SPINNING_KEY, "0")
    if config.profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = config.profile_prefix
    for key, value in config.extra_options.items():
        options.add_session_config_entry(key, value)
    if plugin:
        register_custom_ops(options)
    return options


def _tensor_info(value: Any) -> TensorInfo:
    """An ORT NodeArg (type 'tensor(uint8)', shape with str / None for dynamic dims) as a TensorInfo."""
    dtype = value.type.removeprefix("tensor(").removesuffix(")")
    dtype = {"float": "float32", "double": "float64", "float16": "float16"}.get(dtype, dtype)
    return TensorInfo(dtype=dtype, shape=tuple(d if isinstance(d, int) else None for d in value.shape))


class OrtSession:
    """One ``onnxruntime.InferenceSession`` over an exported FASeg file."""

    def __init__(self, path: str | os.PathLike[str], config: SessionConfig | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.config = config or SessionConfig()
        if not self.path.is_file():
            raise SessionError(f"ONNX model {str(self.path)!r} does not exist")
        self.metadata = read_metadata(self.path)
        self.flavour = self.metadata.get(META_FLAVOUR, PORTABLE_FLAVOUR)
        self.precision = self.metadata.get(META_PRECISION, "fp32")
        options = session_options(self.config, plugin=self.flavour == PLUGIN_FLAVOUR)
        providers = choose_providers(
            self.config.device,
            ort.get_available_providers(),
            precision=self.precision,
            trt_cache_dir=self.config.trt_cache_dir,
        )
        for provider in providers:
            if isinstance(provider, tuple) and provider[0] == TENSORRT_EP:
                Path(provider[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise SessionError(f"onnxruntime cannot load {str(self.path)!r}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        #: The first provider is a GPU one: ``run`` uses I/O binding (fixed for the session's life).
        self.on_gpu = self.providers[0] in GPU_PROVIDERS

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    @property
    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the file's bucket, from the graph (or the metadata when the graph leaves it dynamic)."""
        shape = self.session.get_inputs()[0].shape
        if len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int):
            return shape[1], shape[2]
        return metadata_input_size(self.metadata, self.path.name)

    def check_serving_io(self) -> tuple[int, int] | None:
        """Check the graph against the serving contract (:func:`~faseg.export.contract.check_serving_io`);
        its fixed (H, W), or None when the graph leaves them dynamic."""
        inputs = {i.name: _tensor_info(i) for i in self.session.get_inputs()}
        outputs = {o.name: _tensor_info(o) for o in self.session.get_outputs()}
        try:
            return check_serving_io(inputs, outputs)
        except ContractError as exc:
            raise SessionError(f"{str(self.path)!r}: {exc}") from exc

    def run(self, images: np.ndarray, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """images uint8 (N, H, W, 3) -> {output name: array} (all outputs unless ``outputs`` names some).

        Raises :class:`~faseg.export.contract.OutOfDeviceMemory` when the batch does not fit."""
        names = list(outputs) if outputs is not None else self.output_names
        images = np.ascontiguousarray(images)
        try:
            if not self.on_gpu:
                return dict(zip(names, self.session.run(names, {self.input_name: images})))
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, images)
            for name in names:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            return dict(zip(names, binding.copy_outputs_to_cpu()))
        except Exception as exc:  # onnxruntime's pybind exception types
            if _OOM_MESSAGE.search(str(exc)):
                raise OutOfDeviceMemory(str(exc)) from exc
            raise

    def end_profiling(self) -> str | None:
        """Stop profiling and return the trace file (None when profiling is off)."""
        return self.session.end_profiling() if self.config.profile_prefix else None
