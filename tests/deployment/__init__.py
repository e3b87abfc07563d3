"""Container and deployment tests (docker/, docker-compose.yml), and what they share: the container engine,
the CPU image build, stand-in images for the compose stack.

The engine is podman (or docker) on this machine; the slow tests skip with the reason when there is none,
unless FASEG_REQUIRE_CONTAINERS=1. On the development machines run
`bash ../shared/tools/container-base.sh` once (docker/ci_check.sh does everything).
Environment:
  FASEG_CONTAINER_ENGINE   podman | docker (default: podman when installed, else docker)
  FASEG_CPU_IMAGE          use this already-built CPU image instead of building docker/Dockerfile.cpu
  FASEG_IMAGE_BUILD_ARGS   extra arguments for the build (default here: the local CPU torch wheel,
                           `--build-context wheels=/opt/wheels --build-arg TORCH_INDEX_URL=`)
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPU_IMAGE_TAG = "localhost/faseg:cpu-test"
CONTAINERS_CONF = Path("/var/tmp/faseg-container-base/containers.conf")
LOCAL_WHEELS = Path("/opt/wheels")


def engine() -> str:
    """The container engine's executable; skips (or fails under FASEG_REQUIRE_CONTAINERS=1) without one."""
    name = os.environ.get("FASEG_CONTAINER_ENGINE") or ("podman" if shutil.which("podman") else "docker")
    path = shutil.which(name)
    if path and name == "podman" and "CONTAINERS_CONF" not in os.environ and CONTAINERS_CONF.is_file():
        os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF)  # podman run needs it here (setrlimit)
    usable = bool(path) and run([path, "info"], check=False, timeout=60).returncode == 0
    if not usable:
        reason = f"no usable container engine ({name}); see docker/ci_check.sh"
        if os.environ.get("FASEG_REQUIRE_CONTAINERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert path is not None
    return path


def run(args: list[str], *, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        raise AssertionError(f"{shlex.join(args)} exited {result.returncode}:\n{output}")
    return result


def default_build_args() -> list[str]:
    if "FASEG_IMAGE_BUILD_ARGS" in os.environ:
        return shlex.split(os.environ["FASEG_IMAGE_BUILD_ARGS"])
    if any(LOCAL_WHEELS.glob("torch-*+cpu-*.whl")):
        # The PyTorch CPU index is not reachable here; PyPI's torch is the multi-GB CUDA build.
        return ["--build-context", f"wheels={LOCAL_WHEELS}", "--build-arg", "TORCH_INDEX_URL="]
    return []


def cpu_image(exe: str) -> str:
    """The CPU image: FASEG_CPU_IMAGE, or docker/Dockerfile.cpu built now (layer cache: fast when unchanged)."""
    if os.environ.get("FASEG_CPU_IMAGE"):
        return os.environ["FASEG_CPU_IMAGE"]
    args = [exe, "build", "-f", "docker/Dockerfile.cpu", "-t", CPU_IMAGE_TAG, *default_build_args()]
    if Path(exe).name == "podman":
        args += ["--format", "docker"]  # OCI images drop HEALTHCHECK
    run([*args, "."], cwd=ROOT, timeout=3600)
    return CPU_IMAGE_TAG


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")
