"""ONNX Runtime backend: an adapter over :class:`faseg.export.session.OrtSession`, the session that
``faseg verify`` and the benchmarks run (providers, custom ops, I/O binding and the serving contract live there).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from faseg.export.contract import CONFIDENCE_NAME, LABELS_NAME, SERVING_OUTPUTS, ContractError
from faseg.export.custom_ops import CustomOpsLibraryNotFoundError
from faseg.export.session import OrtSession, SessionConfig, SessionError

from .base import Backend, BackendError, BackendOutput, ModelInfo

log = logging.getLogger(__name__)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, session: OrtSession, info: ModelInfo, *, device: str, max_batch_size: int, precision: str):
        super().__init__(info, device=device, max_batch_size=max_batch_size, precision=precision)
        self.session = session

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
        config = SessionConfig(
            device=device,
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
            # On CPU the same cores decode, post-process and serve HTTP between runs (session.py).
            allow_spinning=device != "cpu",
            trt_cache_dir=(cache_dir or Path.home() / ".cache" / "faseg") / "ort-trt-engines",
        )
        try:
            session = OrtSession(path, config)
            info = ModelInfo.from_metadata(model_name, session.metadata, input_size=session.check_serving_io())
        except (SessionError, ContractError, CustomOpsLibraryNotFoundError) as exc:
            raise BackendError(str(exc)) from exc
        # An fp16 file (--precision fp16) computes in fp16 whatever the setting says (on the CPU provider ONNX
        # Runtime widens what it has no fp16 kernels for: it runs, slower than fp32); an int8 file (--precision
        # int8, QDQ) computes its convolutions and matrix multiplies in int8 on every provider.
        if session.precision in ("fp16", "int8"):
            precision = session.precision
        log.info("onnxruntime session for %s on providers %s", path, session.providers)
        return cls(session, info, device=device, max_batch_size=max_batch_size, precision=precision)

    def details(self) -> dict[str, Any]:
        return {"providers": self.session.providers}

    def infer(self, images: np.ndarray) -> BackendOutput:
        out = self.session.run(images, SERVING_OUTPUTS)
        return BackendOutput(labels=out[LABELS_NAME], confidence=out[CONFIDENCE_NAME].astype(np.float32, copy=False))
