"""What this install can do (`faseg doctor`): one :class:`Check` per capability, each with the command that
fixes it when it is missing.

The checks look, they never build or download: the custom-op library, the CUDA kernels and TensorRT plugins
(compile check), TensorRT, ONNX Runtime and its execution providers, a GPU, the cache directory and the
bundled demo model (and whether its ONNX export is already cached).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from faseg.export import custom_ops, tensorrt_runtime
from faseg.model.demo import demo_checkpoint_dir
from faseg.service.core.config import Settings
from faseg.service.core.default_model import demo_onnx_name


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None  # the command (or step) that makes it ok; None when ok
    needed_for: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_custom_ops() -> Check:
    library = custom_ops.ort_custom_ops_library()
    if library is not None:
        return Check("custom-op library", True, str(library), needed_for="plugin-flavour ONNX files on ONNX Runtime")
    return Check(
        "custom-op library",
        False,
        "libfaseg_ort_ops.so not built (looked at " + ", ".join(map(str, custom_ops.library_search_paths())) + ")",
        "bash export/plugins/build.sh   (or: make custom-ops; needs cmake and a C++17 compiler)",
        "plugin-flavour ONNX files on ONNX Runtime",
    )


def _nvcc() -> str | None:
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").is_file() else None)


def check_cuda_kernels() -> Check:
    try:  # the kernels are torch ops: without torch (the CPU image) there is nothing to load them into
        from faseg.model.ops import cuda_library
    except ImportError as exc:
        return Check("CUDA kernels", False, f"torch is not installed ({exc})", "pip install torch", "the torch backend")
    found = [p for p in cuda_library.library_search_paths() if p.is_file()]
    if found:
        return Check("CUDA kernels", True, str(found[0]), needed_for="fast deformable attention / HRCA on a GPU")
    nvcc = _nvcc()
    fix = "bash export/plugins/build_cuda.sh   (or: make cuda-check)"
    return Check(
        "CUDA kernels",
        False,
        f"libfaseg_cuda_kernels.so not built; nvcc {'at ' + nvcc if nvcc else 'not found'}",
        fix if nvcc else "install the CUDA toolkit (nvcc), then " + fix,
        "fast deformable attention / HRCA on a GPU",
    )


def check_trt_plugins() -> Check:
    path = tensorrt_runtime.plugin_library_path()
    if path is not None and path.is_file():
        return Check("TensorRT plugins", True, str(path), needed_for="plugin-flavour TensorRT engines")
    return Check(
        "TensorRT plugins",
        False,
        tensorrt_runtime.PLUGIN_LIBRARY.missing_message(),
        "bash export/plugins/build_cuda.sh   (needs nvcc)",
        "plugin-flavour TensorRT engines",
    )


def check_tensorrt() -> Check:
    try:
        trt = tensorrt_runtime.import_tensorrt()
    except tensorrt_runtime.TensorRTUnavailableError as exc:
        return Check(
            "TensorRT",
            False,
            str(exc).split(";")[0],
            "use the GPU image (docker/Dockerfile, NVIDIA's TensorRT base) or install TensorRT 10+ with its Python "
            "bindings from NVIDIA; see docs/tensorrt.md",
            "faseg export trt, .plan models",
        )
    return Check("TensorRT", True, f"tensorrt {trt.__version__}", needed_for="faseg export trt, .plan models")


def check_onnxruntime() -> Check:
    try:
        import onnxruntime
    except ImportError as exc:
        return Check("ONNX Runtime", False, f"not importable ({exc})", "pip install onnxruntime", "faseg serve")
    providers = onnxruntime.get_available_providers()
    detail = f"onnxruntime {onnxruntime.__version__}; providers: {', '.join(providers)}"
    check = Check("ONNX Runtime", True, detail, needed_for="faseg serve, export, verify")
    if "CUDAExecutionProvider" not in providers:
        check.detail += " (no CUDA provider: for GPUs, pip uninstall onnxruntime && pip install onnxruntime-gpu)"
    return check


def check_gpu() -> Check:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return Check("GPU", True, f"torch {torch.__version__}: {', '.join(names)}", needed_for="--device cuda")
    cuda_build = torch.version.cuda is not None
    detail = f"torch {torch.__version__} ({'CUDA ' + str(torch.version.cuda) if cuda_build else 'CPU-only build'})"
    fix = (
        "no CUDA device visible: check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
        if cuda_build
        else "pip install torch (a CUDA build, unpinned) on a machine with an NVIDIA GPU"
    )
    return Check("GPU", False, detail + "; no CUDA device", fix, "--device cuda, TensorRT, CUDA kernels")


def check_cache_dir() -> Check:
    cache = Path(Settings().cache_dir).expanduser()
    probe = cache if cache.exists() else next((p for p in cache.parents if p.exists()), cache)
    if os.access(probe, os.W_OK):
        return Check("cache dir", True, f"{cache} (writable)", needed_for="the demo model's ONNX export, engines")
    return Check(
        "cache dir",
        False,
        f"{cache} is not writable",
        f"mkdir -p {cache} && chmod u+w {cache}   (or set FASEG_CACHE_DIR / --cache-dir)",
        "the demo model's ONNX export, engines",
    )


def check_demo_model() -> Check:
    try:
        checkpoint = demo_checkpoint_dir()
    except FileNotFoundError as exc:
        return Check("demo model", False, str(exc).split(";")[0], "pip install -e . (or: faseg demo-model --out DIR)")
    onnx = Path(Settings().cache_dir).expanduser() / demo_onnx_name(checkpoint)
    state = f"ONNX export cached at {onnx}" if onnx.is_file() else "ONNX export not cached yet (faseg serve makes it)"
    return Check("demo model", True, f"{checkpoint}; {state}", needed_for="every subcommand without --checkpoint")


CHECKS = (
    check_custom_ops,
    check_cuda_kernels,
    check_trt_plugins,
    check_tensorrt,
    check_onnxruntime,
    check_gpu,
    check_cache_dir,
    check_demo_model,
)


def run_checks() -> list[Check]:
    return [check() for check in CHECKS]


def report(checks: list[Check]) -> dict[str, Any]:
    return {
        "faseg": _version("faseg"),
        "checks": [c.to_dict() for c in checks],
        "missing": [c.name for c in checks if not c.ok],
    }


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{'ok' if c.ok else 'NO':<3} {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<3} {'':<{width}}  fix: {c.fix}")
    missing = [c.name for c in checks if not c.ok]
    lines.append("everything is in place" if not missing else f"missing: {', '.join(missing)}")
    return "\n".join(lines)
