"""TensorRT branch of ``faseg verify``: run an engine (or one built from the ONNX file) on the verify images.

Imported only by :func:`faseg.export.verify.verify` when TensorRT is tried. It is a thin adapter over
:mod:`faseg.export.tensorrt_runtime` (engine loading, plugin library, buffers, ``execute_async_v3``) and
:mod:`faseg.export.tensorrt_build` (ONNX → engine); neither imports ``tensorrt`` at module import.

Not exercised on the development machines: TensorRT's libraries cannot be installed there
(PyPI's ``tensorrt-cu12-libs`` only points at NVIDIA's own index), so :func:`unavailable_reason` reports why and
verify writes ``"unavailable: <reason>"``.

Limits:
- An engine built here for verification clears TF32 (TensorRT enables it by default for fp32 layers), so the
  tolerances of the file's precision apply (fp32, or fp16 for a mixed file); its batch profile is 1 … ``max_batch``.
- TensorRT has no UINT16 tensors: a file with more than 256 classes (uint16 ``labels``) cannot run.
- A plugin-flavour file needs FASeg's TensorRT plugin library (``$FASEG_TRT_PLUGINS_LIB`` or the repository
  build); without it the runtime reports it as unavailable.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .contract import INPUT_NAME


class TensorRTUnavailable(RuntimeError):
    """TensorRT, a GPU or the plugin library is not available; the message is the reason."""


def unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None when it can."""
    from faseg.export.tensorrt_runtime import unavailable_reason as runtime_reason

    return runtime_reason()


class TensorRTRunner:
    """Callable: uint8 (N, H, W, 3) -> {output name: numpy array}, N ≤ ``max_batch``."""

    def __init__(self, *, onnx_path: Path, engine_path: Path | None = None, max_batch: int = 1) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise TensorRTUnavailable(reason)
        from faseg.export.tensorrt_runtime import TensorRTEngine, TensorRTUnavailableError

        try:
            if engine_path is None:
                engine_path = self._build(Path(onnx_path), max_batch)
            self.engine = TensorRTEngine.load(engine_path)
        except TensorRTUnavailableError as exc:
            raise TensorRTUnavailable(str(exc)) from exc

    @staticmethod
    def _build(onnx_path: Path, max_batch: int) -> Path:
        from faseg.export.tensorrt_build import BatchProfile, EngineBuildOptions, build_engine

        out = Path(tempfile.mkdtemp(prefix="faseg-verify-")) / f"{onnx_path.stem}.plan"
        options = EngineBuildOptions(batch_profile=BatchProfile(1, max_batch, max_batch), tf32=False)
        return build_engine(onnx_path, out, options).engine

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.infer({INPUT_NAME: np.ascontiguousarray(images)})
