"""Loader of FASeg's CUDA kernels for PyTorch (two interchangeable backends).

The kernels (``export/plugins/cuda/``) have a C ABI: a stream, raw device pointers and integers. They
reach PyTorch in one of two ways, tried in this order by :func:`kernel_backend`:

1. **Prebuilt library** ``libfaseg_cuda_kernels.so`` through :mod:`ctypes`: ``$FASEG_CUDA_KERNELS_LIB``
   when set (then the only candidate), else ``<repo>/build/cuda/cuda/libfaseg_cuda_kernels.so`` from
   ``export/plugins/build_cuda.sh`` (sm_80 + sm_90 SASS, compute_90 PTX, static CUDA runtime).
2. **PyTorch extension** built with :func:`torch.utils.cpp_extension.load` from
   ``export/plugins/torch_ext/faseg_torch_ext.cpp`` and the kernel sources into
   ``<repo>/build/torch_ext`` (needs nvcc and a CUDA build of torch). It is compiled only when asked
   (``build=True`` or :func:`build_extension`), because that takes minutes; a finished build is reused.

Both backends expose the same methods and take tensors whose shapes, dtypes, contiguity and
allocation were checked by the caller (:mod:`faseg.model.ops.cuda_ops`); they launch on PyTorch's
current stream of the tensors' device. The host-only helpers (``topk_check``,
``topk_workspace_size``, ...) also work without a GPU.
"""

from __future__ import annotations

import abc
import ctypes
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

LIBRARY_ENV = "FASEG_CUDA_KERNELS_LIB"
LIBRARY_NAME = "libfaseg_cuda_kernels.so"
EXTENSION_NAME = "faseg_torch_ext"
BUILD_COMMAND = "export/plugins/build_cuda.sh"
ABI_VERSION = 1

_PACKAGE_DIR = Path(__file__).resolve().parent  # <repo>/model/ops
REPO_ROOT = _PACKAGE_DIR.parent.parent
PLUGINS_DIR = REPO_ROOT / "export" / "plugins"
REPO_LIBRARY = REPO_ROOT / "build" / "cuda" / "cuda" / LIBRARY_NAME
EXTENSION_BUILD_DIR = REPO_ROOT / "build" / "torch_ext"
EXTENSION_SOURCES = (
    PLUGINS_DIR / "torch_ext" / "faseg_torch_ext.cpp",
    PLUGINS_DIR / "cuda" / "ms_deform_attn_kernel.cu",
    PLUGINS_DIR / "cuda" / "topk_cross_attn_kernel.cu",
    PLUGINS_DIR / "ort" / "topk_cross_attn_cpu.cc",
)

# FasegDType of the C ABI.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.float64: 2}
TOPK_MODES = {"window": 0, "bilinear": 1}


class KernelsUnavailableError(RuntimeError):
    """The CUDA kernels cannot be used here; the message says why and how to build them."""


class TopKShape(NamedTuple):
    """``FasegTopKCrossAttnShape``: sizes from the inputs plus the op attributes."""

    batch: int
    num_queries: int
    channels: int
    hr_h: int
    hr_w: int
    num_tokens: int
    num_heads: int
    divisor: int
    mode: int
    level0_h: int
    level0_w: int


class KernelBackend(abc.ABC):
    """One way of calling the kernels. ``origin`` names the library or extension it came from."""

    name: str
    origin: str

    @abc.abstractmethod
    def msda_forward(self, value: Tensor, shapes: Tensor, starts: Tensor, loc: Tensor, attn: Tensor, out: Tensor):
        """out [N, Lq, M, D] = MSDeformAttn; shapes/starts int32 on the same device."""

    @abc.abstractmethod
    def msda_backward(
        self,
        value: Tensor,
        shapes: Tensor,
        starts: Tensor,
        loc: Tensor,
        attn: Tensor,
        grad_out: Tensor,
        grad_value: Tensor,
        grad_loc: Tensor,
        grad_attn: Tensor,
    ) -> None:
        """Writes the three gradients (all tensors float32 or all float64)."""

    @abc.abstractmethod
    def topk_check(self, shape: TopKShape) -> str:
        """ "" when ``shape`` is valid, else the contract's error message (host only)."""

    @abc.abstractmethod
    def topk_num_memory(self, shape: TopKShape) -> int:
        """k·window² selected pixels (host only)."""

    @abc.abstractmethod
    def topk_workspace_size(self, shape: TopKShape, upper_bound: bool = False) -> int:
        """Workspace bytes (host only)."""

    @abc.abstractmethod
    def topk_forward(
        self,
        shape: TopKShape,
        query: Tensor,
        feat: Tensor,
        pos: Tensor,
        coarse: Tensor,
        w_in: Tensor,
        b_in: Tensor | None,
        w_out: Tensor,
        b_out: Tensor | None,
        out: Tensor,
        workspace: Tensor,
    ) -> None:
        """out [N, Q, C] = HRCA (float32 tensors; workspace a uint8 tensor of topk_workspace_size bytes)."""

    @abc.abstractmethod
    def topk_select(self, shape: TopKShape, coarse: Tensor, pixels: Tensor, workspace: Tensor) -> None:
        """pixels [N, k·window²] int32 = the selected flat 1/4 pixels."""


# ------------------------------------------------------------------------------------------------
# ctypes backend
# ------------------------------------------------------------------------------------------------


class _TopKShapeStruct(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in TopKShape._fields]


def _stream(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else None)


class CtypesKernels(KernelBackend):
    """``libfaseg_cuda_kernels.so`` loaded with ctypes."""

    name = "ctypes"

    def __init__(self, path: Path):
        self.origin = str(path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise KernelsUnavailableError(f"cannot load {path}: {exc}") from exc
        i64, vp, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        shape_p = ctypes.POINTER(_TopKShapeStruct)
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "faseg_cuda_abi_version": (i32, []),
            "faseg_cuda_error_string": (ctypes.c_char_p, [i32]),
            "faseg_ms_deform_attn_forward": (i32, [vp, i32, i32, vp, vp, vp, vp, vp, vp] + [i64] * 7),
            "faseg_ms_deform_attn_backward": (i32, [vp, i32, vp, vp, vp, vp, vp, vp, vp, vp, vp] + [i64] * 7),
            "faseg_topk_cross_attn_check": (i32, [shape_p, ctypes.c_char_p, ctypes.c_size_t]),
            "faseg_topk_cross_attn_num_memory": (i64, [shape_p]),
            "faseg_topk_cross_attn_workspace_size": (ctypes.c_size_t, [shape_p, i32]),
            "faseg_topk_cross_attn_forward": (i32, [vp, shape_p] + [vp] * 9 + [vp, ctypes.c_size_t]),
            "faseg_topk_cross_attn_select": (i32, [vp, shape_p, vp, vp, vp, ctypes.c_size_t]),
        }
        for symbol, (restype, argtypes) in signatures.items():
            try:
                fn = getattr(lib, symbol)
            except AttributeError as exc:
                raise KernelsUnavailableError(f"{path} does not export {symbol} (stale build?)") from exc
            fn.restype, fn.argtypes = restype, argtypes
        version = lib.faseg_cuda_abi_version()
        if version != ABI_VERSION:
            raise KernelsUnavailableError(f"{path} has C ABI version {version}, expected {ABI_VERSION}; rebuild it")
        self._lib = lib

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            message = self._lib.faseg_cuda_error_string(status).decode()
            raise RuntimeError(f"{what} failed: {message} (cudaError {status})")

    def msda_forward(self, value, shapes, starts, loc, attn, out):
        n, s, m, d = value.shape
        with torch.cuda.device(value.device):
            status = self._lib.faseg_ms_deform_attn_forward(
                _stream(value), DTYPE_CODES[value.dtype], DTYPE_CODES[loc.dtype],
                _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc), _ptr(attn), _ptr(out),
                n, s, m, d, shapes.shape[0], loc.shape[1], loc.shape[4],
            )  # fmt: skip
        self._check(status, "faseg_ms_deform_attn_forward")

    def msda_backward(self, value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn):
        n, s, m, d = value.shape
        with torch.cuda.device(value.device):
            status = self._lib.faseg_ms_deform_attn_backward(
                _stream(value), DTYPE_CODES[value.dtype],
                _ptr(value), _ptr(shapes), _ptr(starts), _ptr(loc), _ptr(attn), _ptr(grad_out),
                _ptr(grad_value), _ptr(grad_loc), _ptr(grad_attn),
                n, s, m, d, shapes.shape[0], loc.shape[1], loc.shape[4],
            )  # fmt: skip
        self._check(status, "faseg_ms_deform_attn_backward")

    def topk_check(self, shape):
        message = ctypes.create_string_buffer(512)
        self._lib.faseg_topk_cross_attn_check(ctypes.byref(_TopKShapeStruct(*shape)), message, len(message))
        return message.value.decode()

    def topk_num_memory(self, shape):
        return int(self._lib.faseg_topk_cross_attn_num_memory(ctypes.byref(_TopKShapeStruct(*shape))))

    def topk_workspace_size(self, shape, upper_bound=False):
        return int(
            self._lib.faseg_topk_cross_attn_workspace_size(ctypes.byref(_TopKShapeStruct(*shape)), int(upper_bound))
        )

    def topk_forward(self, shape, query, feat, pos, coarse, w_in, b_in, w_out, b_out, out, workspace):
        with torch.cuda.device(query.device):
            status = self._lib.faseg_topk_cross_attn_forward(
                _stream(query), ctypes.byref(_TopKShapeStruct(*shape)),
                _ptr(query), _ptr(feat), _ptr(pos), _ptr(coarse), _ptr(w_in), _ptr(b_in), _ptr(w_out), _ptr(b_out),
                _ptr(out), _ptr(workspace), workspace.numel(),
            )  # fmt: skip
        self._check(status, "faseg_topk_cross_attn_forward")

    def topk_select(self, shape, coarse, pixels, workspace):
        with torch.cuda.device(coarse.device):
            status = self._lib.faseg_topk_cross_attn_select(
                _stream(coarse), ctypes.byref(_TopKShapeStruct(*shape)),
                _ptr(coarse), _ptr(pixels), _ptr(workspace), workspace.numel(),
            )  # fmt: skip
        self._check(status, "faseg_topk_cross_attn_select")


# ------------------------------------------------------------------------------------------------
# torch.utils.cpp_extension backend
# ------------------------------------------------------------------------------------------------


class ExtensionKernels(KernelBackend):
    """The ``faseg_torch_ext`` module built by :func:`build_extension`."""

    name = "extension"

    def __init__(self, module: Any):
        self.origin = str(getattr(module, "__file__", EXTENSION_NAME))
        if module.abi_version() != ABI_VERSION:
            raise KernelsUnavailableError(f"{self.origin} has C ABI version {module.abi_version()}; rebuild it")
        self._m = module

    def msda_forward(self, value, shapes, starts, loc, attn, out):
        self._m.msda_forward(value, shapes, starts, loc, attn, out)

    def msda_backward(self, value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn):
        self._m.msda_backward(value, shapes, starts, loc, attn, grad_out, grad_value, grad_loc, grad_attn)

    def topk_check(self, shape):
        return self._m.topk_check(list(shape))

    def topk_num_memory(self, shape):
        return int(self._m.topk_num_memory(list(shape)))

    def topk_workspace_size(self, shape, upper_bound=False):
        return int(self._m.topk_workspace_size(list(shape), bool(upper_bound)))

    def topk_forward(self, shape, query, feat, pos, coarse, w_in, b_in, w_out, b_out, out, workspace):
        self._m.topk_forward(list(shape), query, feat, pos, coarse, w_in, b_in, w_out, b_out, out, workspace)

    def topk_select(self, shape, coarse, pixels, workspace):
        self._m.topk_select(list(shape), coarse, pixels, workspace)


# ------------------------------------------------------------------------------------------------
# discovery
# ------------------------------------------------------------------------------------------------

_lock = threading.Lock()
_cached: KernelBackend | None = None
_failures: list[str] = []


def library_search_paths() -> list[Path]:
    """Candidates for the prebuilt library: ``$FASEG_CUDA_KERNELS_LIB`` alone when set, else the repo build."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return [Path(override).expanduser()]
    return [REPO_LIBRARY]


def load_library(path: Path | None = None) -> CtypesKernels:
    """Load the prebuilt C-ABI library (works without a GPU for the host-only helpers)."""
    if path is not None:
        return CtypesKernels(Path(path))
    for candidate in library_search_paths():
        if candidate.is_file():
            return CtypesKernels(candidate)
    raise KernelsUnavailableError(
        f"{LIBRARY_NAME} not found (looked at {', '.join(map(str, library_search_paths()))}); "
        f"build it with `{BUILD_COMMAND}` (needs nvcc) or set {LIBRARY_ENV}"
    )


def build_extension(*, verbose: bool = False) -> ExtensionKernels:
    """Build (or reuse) the PyTorch extension with :func:`torch.utils.cpp_extension.load`.

    Needs a CUDA build of torch and nvcc; compiles for the visible GPU's architecture (or
    ``$TORCH_CUDA_ARCH_LIST``). The build lives in ``<repo>/build/torch_ext``.
    """
    if torch.version.cuda is None:
        raise KernelsUnavailableError(f"torch {torch.__version__} is a CPU build; the extension needs CUDA torch")
    missing = [str(p) for p in EXTENSION_SOURCES if not p.is_file()]
    if missing:
        raise KernelsUnavailableError(f"extension sources missing (not a source checkout?): {missing}")
    from torch.utils import cpp_extension

    EXTENSION_BUILD_DIR.mkdir(parents=True, exist_ok=True)
    try:
        module = cpp_extension.load(
            name=EXTENSION_NAME,
            sources=[str(p) for p in EXTENSION_SOURCES],
            extra_cflags=["-O3", "-ffp-contract=off"],
            extra_cuda_cflags=["-O3"],
            build_directory=str(EXTENSION_BUILD_DIR),
            verbose=verbose,
        )
    except (OSError, RuntimeError, ImportError) as exc:
        raise KernelsUnavailableError(f"building the PyTorch extension failed: {exc}") from exc
    return ExtensionKernels(module)


def kernel_backend(*, build: bool = False) -> KernelBackend | None:
    """The first available backend (prebuilt library, then the extension), or None.

    With ``build=False`` (default) the extension is used only when a build already exists in
    ``<repo>/build/torch_ext`` (cpp_extension still recompiles it if a source changed); with
    ``build=True`` it is compiled if needed. The result is cached; :func:`unavailable_reason`
    explains a None.
    """
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        _failures.clear()
        try:
            _cached = load_library()
            return _cached
        except KernelsUnavailableError as exc:
            _failures.append(str(exc))
        if build or _extension_built():
            try:
                _cached = build_extension()
                return _cached
            except KernelsUnavailableError as exc:
                _failures.append(str(exc))
        else:
            _failures.append(
                f"PyTorch extension not built (faseg.model.ops.cuda_library.build_extension() or {BUILD_COMMAND})"
            )
        return None


def _extension_built() -> bool:
    return any(EXTENSION_BUILD_DIR.glob(f"{EXTENSION_NAME}*.so"))


def unavailable_reason() -> str:
    """Why :func:`kernel_backend` returned None (empty when it did not)."""
    return "; ".join(_failures)


def reset_cache() -> None:
    """Forget the cached backend (tests, or after building)."""
    global _cached
    with _lock:
        _cached = None
        _failures.clear()


def set_backend(backend: KernelBackend | None) -> KernelBackend | None:
    """Force the backend :func:`kernel_backend` returns (tests and benchmarks compare the two);
    None forgets it. Returns the previous one."""
    global _cached
    with _lock:
        previous, _cached = _cached, backend
        _failures.clear()
    return previous


__all__ = [
    "ABI_VERSION",
    "BUILD_COMMAND",
    "LIBRARY_ENV",
    "LIBRARY_NAME",
    "TOPK_MODES",
    "CtypesKernels",
    "ExtensionKernels",
    "KernelBackend",
    "KernelsUnavailableError",
    "TopKShape",
    "build_extension",
    "kernel_backend",
    "library_search_paths",
    "load_library",
    "reset_cache",
    "set_backend",
    "unavailable_reason",
]
