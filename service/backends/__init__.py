"""Inference backends behind one interface (``base.Backend``); each is imported only when chosen."""

from .base import Backend, BackendError, BackendOutOfMemory, BackendOutput, ModelInfo
from .loader import load_backend

__all__ = ["Backend", "BackendError", "BackendOutOfMemory", "BackendOutput", "ModelInfo", "load_backend"]
