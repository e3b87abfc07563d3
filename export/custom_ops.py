"""FASeg's ONNX custom ops: names, attributes, and the ONNX Runtime CPU library that implements them.

Contract: ``docs/plugin_contract.md``. Two ops live in the ONNX domain ``faseg`` (version 1):

- ``FASegMSDeformAttn_TRT``: multi-scale deformable attention, same I/O as NVIDIA's
  ``MultiscaleDeformableAttnPlugin_TRT`` v2.
- ``FASegTopKCrossAttn_TRT``: HRCA (score sum + top-k + window gather + projections + attention).

Every node carries the string attributes ``plugin_version`` and ``plugin_namespace``: the TensorRT ONNX
parser ignores the domain and looks plugins up by (op_type, plugin_version, plugin_namespace). ONNX Runtime
runs the same nodes with ``libfaseg_ort_ops.so``, built by ``export/plugins/build.sh``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .native_library import BUILD_DIR, NativeLibrary

DOMAIN = "faseg"
DOMAIN_VERSION = 1

MS_DEFORM_ATTN_OP = "FASegMSDeformAttn_TRT"
TOPK_CROSS_ATTN_OP = "FASegTopKCrossAttn_TRT"
OP_TYPES = (MS_DEFORM_ATTN_OP, TOPK_CROSS_ATTN_OP)

PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
PLUGIN_ATTRIBUTES = {"plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}

#: ``mode`` attribute of FASegTopKCrossAttn_TRT, keyed by the ``mode`` argument of
#: :func:`faseg.model.ops.topk_cross_attention`.
TOPK_MODES = {"window": 0, "bilinear": 1}
TOPK_DEFAULT_DIVISOR = 32

LIBRARY_ENV = "FASEG_ORT_OPS_LIB"
LIBRARY_NAME = "libfaseg_ort_ops.so"
BUILD_COMMAND = "export/plugins/build.sh"

#: ``$FASEG_ORT_OPS_LIB``, else ``<repo>/build/ort_ops/``, else next to this module (installed packages).
LIBRARY = NativeLibrary(
    name=LIBRARY_NAME,
    env=LIBRARY_ENV,
    defaults=(BUILD_DIR / "ort_ops" / LIBRARY_NAME, Path(__file__).resolve().parent / LIBRARY_NAME),
    build_command=BUILD_COMMAND,
    needs="needs cmake, a C++17 compiler and apt access to Debian's archive for the ORT headers",
)


class CustomOpsLibraryNotFoundError(FileNotFoundError):
    """``libfaseg_ort_ops.so`` is not built (or ``FASEG_ORT_OPS_LIB`` points to a missing file)."""


class CustomOpsLibraryLoadError(CustomOpsLibraryNotFoundError):
    """The library file exists but ONNX Runtime cannot load it as a custom-op library (not a shared object,
    no ``RegisterCustomOps`` symbol, ...): no usable library was found."""


def library_search_paths() -> list[Path]:
    """Where :func:`ort_custom_ops_library` looks, in order (:class:`~faseg.export.native_library.NativeLibrary`)."""
    return LIBRARY.search_paths()


def ort_custom_ops_library() -> Path | None:
    """Path of the built ONNX Runtime custom-op library, or None when it is not built."""
    return LIBRARY.find()


def register_custom_ops(session_options: Any) -> None:
    """Register FASeg's custom ops on an ``onnxruntime.SessionOptions``.

    Raises:
        CustomOpsLibraryNotFoundError: the library is not built; the message names the expected path(s)
            and the build command.
        CustomOpsLibraryLoadError: the file found is not a loadable custom-op library.
    """
    library = ort_custom_ops_library()
    if library is None:
        raise CustomOpsLibraryNotFoundError(missing_library_message())
    try:
        session_options.register_custom_ops_library(str(library))
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        raise CustomOpsLibraryLoadError(
            f"{library} is not a loadable FASeg ONNX Runtime custom-op library ({exc}). Build {LIBRARY_NAME} with "
            f"`{BUILD_COMMAND}` or set {LIBRARY_ENV} to the built library."
        ) from exc


def missing_library_message() -> str:
    return f"FASeg ONNX Runtime custom-op library {LIBRARY.missing_message()}"


__all__ = [
    "BUILD_COMMAND",
    "DOMAIN",
    "DOMAIN_VERSION",
    "LIBRARY",
    "LIBRARY_ENV",
    "LIBRARY_NAME",
    "MS_DEFORM_ATTN_OP",
    "OP_TYPES",
    "PLUGIN_ATTRIBUTES",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "TOPK_CROSS_ATTN_OP",
    "TOPK_DEFAULT_DIVISOR",
    "TOPK_MODES",
    "CustomOpsLibraryLoadError",
    "CustomOpsLibraryNotFoundError",
    "library_search_paths",
    "missing_library_message",
    "ort_custom_ops_library",
    "register_custom_ops",
]
