"""docker/build_engines.sh with FASEG_ENGINE_OUTPUT=repository lays every built bucket out as a model
repository that the service reads (stub commands stand in for faseg, python3 and nvidia-smi)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from faseg.service.repository import scan_repository

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "build_engines.sh"


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    bin_dir, checkpoint = tmp_path / "bin", tmp_path / "my_model"
    bin_dir.mkdir(exist_ok=True)
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    _stub(
        bin_dir / "python3",
        'case "$*" in *tensorrt*) echo 10.13.0;; *faseg.__version__*) echo 0.1.0;; *) exit 1;; esac\n',
    )
    _stub(bin_dir / "nvidia-smi", 'echo "NVIDIA H100 80GB HBM3, 9.0"\n')
    _stub(
        bin_dir / "faseg",
        'case "$*" in *--help*) exit 0;; esac\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out ] && echo built > "$2" && echo meta > "${2%.*}.json"; shift; done\n',
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FASEG_CHECKPOINT": str(checkpoint),
        "FASEG_ENGINE_CACHE": str(tmp_path / "cache"),
        "FASEG_PLUGIN_LIBRARY": "",
        "FASEG_ENGINE_BUCKETS": "512x512,512x1024",
        **extra,
    }
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_engines_laid_out_as_a_repository(tmp_path: Path) -> None:
    result = _run(tmp_path, FASEG_ENGINE_OUTPUT="repository")
    assert result.returncode == 0, result.stderr
    repository = Path(result.stdout.strip())
    models = scan_repository(repository)
    assert list(models) == ["my_model"] and models["my_model"].error is None
    files = models["my_model"].versions["1"]
    assert [f.name for f in files] == ["512x1024.plan", "512x512.plan"]
    assert all(f.resolve().name == "model.plan" and f.with_suffix(".json").is_file() for f in files)
    again = _run(tmp_path, FASEG_ENGINE_OUTPUT="repository")
    assert again.returncode == 0 and again.stdout == result.stdout  # the cache hit reuses the layout


def test_onnxruntime_repository_and_bad_output(tmp_path: Path) -> None:
    result = _run(tmp_path, FASEG_ENGINE_OUTPUT="repository", FASEG_ENGINE_BACKEND="onnxruntime")
    assert result.returncode == 0, result.stderr
    files = scan_repository(Path(result.stdout.strip()))["my_model"].versions["1"]
    assert [f.name for f in files] == ["512x1024.onnx", "512x512.onnx"]
    bad = _run(tmp_path, FASEG_ENGINE_OUTPUT="folder")
    assert bad.returncode == 2 and "FASEG_ENGINE_OUTPUT" in bad.stderr
