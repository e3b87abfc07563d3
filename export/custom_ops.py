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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .native_library import BUILD_DIR, NativeLibrary

if TYPE_CHECKING:
    import onnx
    from numpy.typing import DTypeLike

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


#: numpy dtype name -> ``onnx.TensorProto`` element type name: the dtypes the ops' inputs and outputs use.
_ONNX_ELEMENT_TYPES = {"float32": "FLOAT", "float16": "FLOAT16", "int32": "INT32", "uint8": "UINT8"}


def single_node_model(
    op_type: str,
    inputs: Mapping[str, np.ndarray],
    out_shape: Sequence[int],
    out_dtype: DTypeLike = np.float32,
    *,
    plugin_attributes: bool = True,
    **attributes: Any,
) -> onnx.ModelProto:
    """A checked ONNX model of one ``op_type`` node in domain ``faseg``, for tests and benchmarks of the ops.

    Graph inputs: ``inputs``' names, dtypes and shapes, in order; one output ``output`` (``out_shape``,
    ``out_dtype``). The node carries :data:`PLUGIN_ATTRIBUTES` (``plugin_attributes=False`` leaves them
    out) and ``attributes``, which take precedence. Opsets ``""`` 17 and ``faseg`` v1, IR version 10 (onnx
    1.23 writes IR 14 by default, which ORT 1.31 rejects).

    Raises:
        ValueError: an input or the output has a dtype other than float32, float16, int32 or uint8.
    """
    import onnx
    from onnx import helper

    def value_info(name: str, dtype: DTypeLike, shape: Sequence[int]) -> onnx.ValueInfoProto:
        dtype = np.dtype(dtype)
        if dtype.name not in _ONNX_ELEMENT_TYPES:
            raise ValueError(
                f"{op_type} model: {name!r} has dtype {dtype.name}; supported: {', '.join(_ONNX_ELEMENT_TYPES)}"
            )
        return helper.make_tensor_value_info(name, getattr(onnx.TensorProto, _ONNX_ELEMENT_TYPES[dtype.name]), shape)

    node_attributes = {**PLUGIN_ATTRIBUTES, **attributes} if plugin_attributes else attributes
    graph = helper.make_graph(
        [helper.make_node(op_type, list(inputs), ["output"], domain=DOMAIN, **node_attributes)],
        op_type,
        [value_info(name, array.dtype, list(array.shape)) for name, array in inputs.items()],
        [value_info("output", out_dtype, list(out_shape))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
        ir_version=10,
    )
    onnx.checker.check_model(model)
    return model


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
    "single_node_model",
]
