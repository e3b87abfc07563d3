"""`faseg doctor`: what this install can do, with the command that fixes each missing part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _doctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faseg", "doctor", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_parts_come_with_their_fix(tmp_path: Path) -> None:
    env = {
        "FASEG_ORT_OPS_LIB": str(tmp_path / "missing_ort.so"),
        "FASEG_CUDA_KERNELS_LIB": str(tmp_path / "missing_cuda.so"),
        "FASEG_TRT_PLUGINS_LIB": str(tmp_path / "missing_trt.so"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    done = _doctor("--json", env=env)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert set(checks) == {
        "custom-op library",
        "CUDA kernels",
        "TensorRT plugins",
        "TensorRT",
        "ONNX Runtime",
        "GPU",
        "cache dir",
        "demo model",
    }
    for name in ("custom-op library", "CUDA kernels", "TensorRT plugins"):
        assert not checks[name]["ok"] and name in doc["missing"]
    assert "export/plugins/build.sh" in checks["custom-op library"]["fix"]
    assert "export/plugins/build_cuda.sh" in checks["TensorRT plugins"]["fix"]
    assert all(c["fix"] for c in doc["checks"] if not c["ok"])  # every missing part says how to fix it
    assert all(c["fix"] is None for c in doc["checks"] if c["ok"])
    assert checks["ONNX Runtime"]["ok"] and "CPUExecutionProvider" in checks["ONNX Runtime"]["detail"]
    assert checks["cache dir"]["ok"] and str(tmp_path / "cache" / "faseg") in checks["cache dir"]["detail"]
    assert checks["demo model"]["ok"] and "not cached yet" in checks["demo model"]["detail"]

    text = _doctor("--strict", env=env)  # --strict: exit 1 when something is missing
    assert text.returncode == 1 and "fix: bash export/plugins/build.sh" in text.stdout


def test_a_built_library_is_found(tmp_path: Path) -> None:
    library = tmp_path / "libfaseg_ort_ops.so"
    library.write_bytes(b"")  # doctor only looks for the file; loading it is the plugin tests' job
    doc = json.loads(_doctor("--json", env={"FASEG_ORT_OPS_LIB": str(library)}).stdout)
    [check] = [c for c in doc["checks"] if c["name"] == "custom-op library"]
    assert check["ok"] and check["detail"] == str(library.resolve())
