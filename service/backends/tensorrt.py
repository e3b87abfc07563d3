"""Native TensorRT backend (TensorRT 10 Python API) for engines built by ``faseg export trt``.

Written against the documented API and not run here (no TensorRT runtime on the development machines):
deserialize the engine after loading the plugin library, give every I/O tensor a device buffer sized for
the profile's largest batch, copy through pinned host buffers and run ``execute_async_v3`` on one stream.
CUDA memory and streams come from torch, which the service already depends on.

An engine carries no ONNX metadata; classes, palette and input size come from a sidecar next to it:
``<engine stem>.json`` holding the ``faseg.*`` keys, or else the ``<engine stem>.onnx`` it was built from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

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


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendError(
            "backend tensorrt needs the TensorRT Python package and runtime (pip install tensorrt, or the "
            "GPU container image); use --backend onnxruntime otherwise"
        ) from exc
    return tensorrt


def read_sidecar_metadata(engine_path: Path) -> dict[str, str]:
    sidecar = engine_path.with_suffix(".json")
    if sidecar.is_file():
        try:
            raw = json.loads(sidecar.read_text())
        except ValueError as exc:
            raise BackendError(f"{str(sidecar)!r} is not JSON: {exc}") from exc
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in raw.items()}
    onnx_file = engine_path.with_suffix(".onnx")
    if onnx_file.is_file():
        from .onnxruntime import read_metadata

        return read_metadata(onnx_file)
    raise BackendError(f"engine {str(engine_path)!r} needs {sidecar.name} or {onnx_file.name} beside it")


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: Any, info: ModelInfo, *, max_batch_size: int, precision: str):
        import torch

        trt = _import_tensorrt()
        super().__init__(info, device="cuda", max_batch_size=max_batch_size, precision=precision)
        self._torch = torch
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        h, w = info.input_size
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for required in (INPUT_NAME, LABELS_NAME, CONFIDENCE_NAME):
            if required not in names:
                raise BackendError(f"engine has no tensor {required!r}; it has {names}")
        profile_max = engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0]
        if profile_max < max_batch_size:
            log.warning("engine profile allows batches up to %d; max_batch_size lowered", profile_max)
            self.max_batch_size = profile_max
        dtypes = {
            trt.DataType.UINT8: torch.uint8,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
        }
        self._device_buffers: dict[str, Any] = {}
        self._host_buffers: dict[str, Any] = {}
        for name in (INPUT_NAME, LABELS_NAME, CONFIDENCE_NAME):
            trt_dtype = engine.get_tensor_dtype(name)
            if trt_dtype not in dtypes:
                raise BackendError(f"engine tensor {name!r} has unsupported type {trt_dtype}")
            shape = (self.max_batch_size, h, w, 3) if name == INPUT_NAME else (self.max_batch_size, h, w)
            self._device_buffers[name] = torch.empty(shape, dtype=dtypes[trt_dtype], device="cuda")
            self._host_buffers[name] = torch.empty(shape, dtype=dtypes[trt_dtype], pin_memory=True)
        self._label_dtype = info.label_dtype

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        model_name: str,
        max_batch_size: int = 8,
        precision: str = "fp32",
        plugin_library: Path | None = None,
    ) -> TensorRTBackend:
        trt = _import_tensorrt()
        if not path.is_file():
            raise BackendError(f"TensorRT engine {str(path)!r} does not exist")
        metadata = read_sidecar_metadata(path)
        logger = trt.Logger(trt.Logger.WARNING)
        if plugin_library is not None:
            # Our plugin library registers its creators through getCreators(), which only TensorRT's plugin
            # registry calls (a plain dlopen registers nothing); the export layer owns that loading.
            from faseg.export.tensorrt_runtime import (
                TensorRTRuntimeError,
                TensorRTUnavailableError,
                load_plugin_library,
            )

            try:
                load_plugin_library(plugin_library)
            except (TensorRTUnavailableError, TensorRTRuntimeError) as exc:
                raise BackendError(str(exc)) from exc
        trt.init_libnvinfer_plugins(logger, "")
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(
                f"TensorRT could not deserialize {str(path)!r} (built by another TensorRT version or GPU, "
                "or a plugin library missing: --plugin-library)"
            )
        shape = engine.get_tensor_shape(INPUT_NAME)
        info = ModelInfo.from_metadata(model_name, metadata, input_size=(int(shape[1]), int(shape[2])))
        return cls(engine, info, max_batch_size=max_batch_size, precision=precision)

    def details(self) -> dict[str, Any]:
        return {"profile_max_batch_size": self.max_batch_size}

    def infer(self, images: np.ndarray) -> BackendOutput:
        torch = self._torch
        n = images.shape[0]
        try:
            with torch.cuda.stream(self._stream):
                host_in = self._host_buffers[INPUT_NAME][:n]
                host_in.copy_(torch.from_numpy(images))
                self._device_buffers[INPUT_NAME][:n].copy_(host_in, non_blocking=True)
                self._context.set_input_shape(INPUT_NAME, tuple(images.shape))
                for name, buffer in self._device_buffers.items():
                    self._context.set_tensor_address(name, buffer.data_ptr())
                if not self._context.execute_async_v3(self._stream.cuda_stream):
                    raise BackendError("TensorRT execute_async_v3 failed")
                for name in (LABELS_NAME, CONFIDENCE_NAME):
                    self._host_buffers[name][:n].copy_(self._device_buffers[name][:n], non_blocking=True)
            self._stream.synchronize()
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendOutOfMemory(str(exc)) from exc
        labels = self._host_buffers[LABELS_NAME][:n].numpy().astype(self._label_dtype)
        confidence = self._host_buffers[CONFIDENCE_NAME][:n].numpy().astype(np.float32)
        return BackendOutput(labels=labels, confidence=confidence)

    def close(self) -> None:
        self._device_buffers.clear()
        self._host_buffers.clear()
        self._context = None
        self._engine = None
