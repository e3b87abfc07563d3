"""Build the backend that ``Settings`` ask for. Backend modules are imported here, lazily, so that a
CPU-only install never imports TensorRT and an ONNX-only deployment never needs a checkpoint loader."""

from __future__ import annotations

from ..core.config import Settings
from .base import Backend, BackendError


def load_backend(settings: Settings) -> Backend:
    """``settings`` must be effective (``Settings.effective``): model path, backend and name resolved."""
    if settings.model is None or settings.backend is None or settings.model_name is None:
        raise BackendError("settings are not resolved: call Settings.effective() with the model path first")
    model, name = settings.model, settings.model_name
    if settings.backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.load(
            model,
            model_name=name,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            precision=settings.precision,
            intra_op_threads=settings.intra_op_threads,
            graph_optimization=settings.graph_optimization,
            cache_dir=settings.cache_dir,
        )
    if settings.backend == "torch":
        from .torch import TorchBackend

        return TorchBackend.load(
            model,
            model_name=name,
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            precision=settings.precision,
            intra_op_threads=settings.intra_op_threads,
            kernels=settings.kernels,
        )
    from .tensorrt import TensorRTBackend

    return TensorRTBackend.load(
        model,
        model_name=name,
        max_batch_size=settings.max_batch_size,
        precision=settings.precision,
        plugin_library=settings.plugin_library,
    )
