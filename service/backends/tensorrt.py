"""Native TensorRT backend: an adapter over :class:`faseg.export.tensorrt_runtime.TensorRTEngine`, the engine
runtime that ``faseg verify`` uses (plugin library, deserialization, pinned I/O buffers, one CUDA stream).

An engine carries no ONNX metadata; classes, palette and input size come from ``<engine stem>.json`` beside it
(written by ``faseg export trt``), or else from the ``<engine stem>.onnx`` it was built from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from faseg.export.contract import CONFIDENCE_NAME, INPUT_NAME, LABELS_NAME, ContractError
from faseg.export.tensorrt_runtime import TensorRTEngine, TensorRTRuntimeError, TensorRTUnavailableError

from .base import Backend, BackendError, BackendOutput, ModelInfo

log = logging.getLogger(__name__)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: TensorRTEngine, info: ModelInfo, *, max_batch_size: int, precision: str):
        super().__init__(info, device="cuda", max_batch_size=max_batch_size, precision=precision)
        if engine.max_batch_size < max_batch_size:
            log.warning("engine profile allows batches up to %d; max_batch_size lowered", engine.max_batch_size)
            self.max_batch_size = engine.max_batch_size
        self.engine = engine
        self._buffers = engine.allocate(self.max_batch_size)

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
        """``plugin_library`` None: FASeg's plugin library when it is built (``$FASEG_TRT_PLUGINS_LIB``)."""
        try:
            engine = TensorRTEngine.load(path, plugin_libraries=[plugin_library] if plugin_library else None)
            if not engine.metadata:
                raise BackendError(
                    f"engine {str(path)!r} needs {path.with_suffix('.json').name} or "
                    f"{path.with_suffix('.onnx').name} beside it"
                )
            info = ModelInfo.from_metadata(model_name, engine.metadata, input_size=engine.check_serving_io())
        except (TensorRTUnavailableError, TensorRTRuntimeError, ContractError) as exc:
            raise BackendError(f"backend tensorrt: {exc}") from exc
        return cls(engine, info, max_batch_size=max_batch_size, precision=precision)

    def details(self) -> dict[str, Any]:
        return {"profile_max_batch_size": self.engine.max_batch_size}

    def infer(self, images: np.ndarray) -> BackendOutput:
        out = self.engine.infer({INPUT_NAME: images}, self._buffers)
        return BackendOutput(
            labels=out[LABELS_NAME].astype(self.info.label_dtype, copy=False),
            confidence=out[CONFIDENCE_NAME].astype(np.float32, copy=False),
        )

    def close(self) -> None:
        self.engine.close()
