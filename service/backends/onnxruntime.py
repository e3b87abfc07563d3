"""ONNX Runtime backend: CPU, CUDA EP and TensorRT EP, for files exported by ``faseg export onnx``.

The graph takes ``images`` uint8 (N, H, W, 3) and returns ``labels`` and ``confidence``; the ``faseg.*``
metadata props carry classes, palette and input size. Plugin-flavour files need our custom-op library,
registered through ``faseg.export.custom_ops`` before the session is created.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from faseg.export.metadata import META_FLAVOUR, META_PRECISION

from .base import (
    CONFIDENCE_NAME,
    INPUT_NAME,
    LABELS_NAME,
    Backend,
    BackendError,
    BackendOutOfMemory,
    BackendOutput,
    ModelInfo,
)

log = logging.getLogger(__name__)

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
ALLOW_SPINNING_KEY = "session.intra_op.allow_spinning"
PLUGIN_FLAVOUR = "plugin"
# ONNX Runtime reports allocation failures as generic RuntimeExceptions; these are the messages of its
# BFC arena and of the CUDA / TensorRT providers.
_OOM_MESSAGE = re.compile(r"out of memory|failed to allocate memory|cudaErrorMemoryAllocation", re.IGNORECASE)


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, read without creating a session (external data not loaded)."""
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for files that are not ONNX
        raise BackendError(f"cannot read ONNX model {str(path)!r}: {exc}") from exc
    return {prop.key: prop.value for prop in proto.metadata_props}


def choose_providers(
    device: str, available: list[str], *, cache_dir: Path, precision: str
) -> list[str | tuple[str, dict[str, Any]]]:
    """Provider order TensorRT EP → CUDA EP → CPU on cuda (those installed); CPU alone on cpu."""
    if device == "cpu":
        return [CPU_EP]
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if TENSORRT_EP in available:
        engine_cache = cache_dir / "ort-trt-engines"
        engine_cache.mkdir(parents=True, exist_ok=True)
        providers.append(
            (
                TENSORRT_EP,
                {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(engine_cache),
                    "trt_timing_cache_enable": True,
                    "trt_fp16_enable": precision == "fp16",
                },
            )
        )
    if CUDA_EP in available:
        providers.append(CUDA_EP)
    if not providers:
        raise BackendError(
            f"device cuda requested but this onnxruntime offers only {available}; install onnxruntime-gpu"
        )
    providers.append(CPU_EP)
    return providers


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, session: Any, info: ModelInfo, *, device: str, max_batch_size: int, precision: str):
        super().__init__(info, device=device, max_batch_size=max_batch_size, precision=precision)
        self._session = session

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_name: str,
        device: str = "cpu",
        max_batch_size: int = 8,
        precision: str = "fp32",
        intra_op_threads: int = 0,
        graph_optimization: str = "all",
        cache_dir: Path | None = None,
    ) -> OnnxRuntimeBackend:
        import onnxruntime as ort

        if not path.is_file():
            raise BackendError(f"ONNX model {str(path)!r} does not exist")
        metadata = read_metadata(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        if device == "cpu":
            # ONNX Runtime's intra-op threads spin-wait after every run by default. In the service the same
            # cores decode, post-process and serve HTTP between runs, and the spinning threads starve them:
            # on the 2-core development machines it halved faseg_tiny's (the demo model's) HTTP throughput at c=1
            # while the raw backend was unchanged (benchmarks/ort_spinning.py, docs/benchmarks.md).
            options.add_session_config_entry(ALLOW_SPINNING_KEY, "0")
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        if metadata.get(META_FLAVOUR) == PLUGIN_FLAVOUR:
            from faseg.export.custom_ops import register_custom_ops  # only plugin-flavour files need it

            register_custom_ops(options)
        providers = choose_providers(
            device,
            ort.get_available_providers(),
            cache_dir=cache_dir or Path.home() / ".cache" / "faseg",
            precision=precision,
        )
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise BackendError(f"onnxruntime cannot load {str(path)!r}: {exc}") from exc
        info = ModelInfo.from_metadata(model_name, metadata, input_size=_graph_input_size(session, path))
        # An fp16 file (faseg export onnx --precision fp16) computes in fp16 whatever the setting says; on the
        # CPU provider ONNX Runtime widens what it has no fp16 kernels for, so it runs, slower than fp32. An int8
        # file (--precision int8, QDQ) computes its convolutions and matrix multiplies in int8 on every provider.
        if metadata.get(META_PRECISION) in ("fp16", "int8"):
            precision = metadata[META_PRECISION]
        backend = cls(session, info, device=device, max_batch_size=max_batch_size, precision=precision)
        log.info("onnxruntime session for %s on providers %s", path, session.get_providers())
        return backend

    def details(self) -> dict[str, Any]:
        return {"providers": self._session.get_providers()}

    def infer(self, images: np.ndarray) -> BackendOutput:
        try:
            labels, confidence = self._session.run([LABELS_NAME, CONFIDENCE_NAME], {INPUT_NAME: images})
        except Exception as exc:
            if _OOM_MESSAGE.search(str(exc)):
                raise BackendOutOfMemory(str(exc)) from exc
            raise
        return BackendOutput(labels=labels, confidence=confidence.astype(np.float32, copy=False))


def _graph_input_size(session: Any, path: Path) -> tuple[int, int] | None:
    """Check the graph's I/O against the contract; return its fixed (H, W) when the graph states it."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or inputs[INPUT_NAME].type != "tensor(uint8)":
        found = {name: i.type for name, i in inputs.items()}
        raise BackendError(f"{str(path)!r}: expected input {INPUT_NAME!r} tensor(uint8), found {found}")
    missing = {LABELS_NAME, CONFIDENCE_NAME} - outputs.keys()
    if missing:
        raise BackendError(f"{str(path)!r}: missing outputs {sorted(missing)}; has {sorted(outputs)}")
    if outputs[LABELS_NAME].type not in ("tensor(uint8)", "tensor(uint16)"):
        raise BackendError(f"{str(path)!r}: labels must be uint8 or uint16, not {outputs[LABELS_NAME].type}")
    shape = inputs[INPUT_NAME].shape
    if len(shape) != 4 or shape[3] != 3:
        raise BackendError(f"{str(path)!r}: input must be (N, H, W, 3), graph says {shape}")
    h, w = shape[1], shape[2]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None
