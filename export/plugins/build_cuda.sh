#!/usr/bin/env bash
# Build (= compile check) FASeg's CUDA code with nvcc. Nothing is run on a GPU; no GPU is needed.
#
#   export/plugins/build_cuda.sh [BUILD_DIR]      (default: <repo>/build/cuda)
#
# Builds, through CMake (export/plugins/CMakeLists.txt, Release, Ninja when available):
#   BUILD_DIR/cuda/libfaseg_cuda_kernels.so     the kernels' C ABI (MSDA fwd/bwd, HRCA), sm_80 + sm_90
#   BUILD_DIR/tensorrt/libfaseg_trt_plugins.so  TensorRT IPluginV3 plugins (TensorRT 10.14 headers)
#   BUILD_DIR/ort/libfaseg_ort_ops.so           ONNX Runtime ops, CPU + CUDAExecutionProvider kernels
# and besides
#   - compiles the PyTorch extension binding (torch_ext/faseg_torch_ext.cpp) against the installed
#     torch headers (object only, in the background during the CMake build) when torch is importable;
#   - runs the host-only plugin harness (tensorrt/tests/plugin_host_check.cpp; no GPU, no TensorRT
#     runtime) and writes BUILD_DIR/plugin_host_check.json;
#   - builds the GPU harness BUILD_DIR/tensorrt/faseg_trt_plugin_harness (tensorrt/tests/plugin_harness.cpp:
#     the IPluginV3 call sequence with enqueue; run by tests/export/test_trt_plugin_harness.py);
#   - writes BUILD_DIR/compile_check.json (what was built, for which architectures, how long).
# The CUDA architectures are FASEG_CUDA_ARCHITECTURES (default "80-real;90": sm_80 and sm_90 machine
# code plus compute_90 PTX).
#
# Headers are fetched at build time and never committed: TensorRT's from the kernel-lens wheel
# (fetch_trt_headers.sh), ONNX Runtime's from Debian (fetch_ort_headers.sh); both are cached under
# <repo>/build. Stdout gets a short summary; logs go to stderr.
#
# Without nvcc the script prints "SKIPPED" and exits 0, unless FASEG_REQUIRE_CUDA_BUILD=1 (then 1).
set -euo pipefail

start=$(date +%s)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
build_dir=${1:-$repo_root/build/cuda}
archs=${FASEG_CUDA_ARCHITECTURES:-80-real;90}

log() { printf 'build_cuda: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

nvcc=${CUDACXX:-$(command -v nvcc || true)}
if [[ -z $nvcc && -x /usr/local/cuda/bin/nvcc ]]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [[ -z $nvcc ]]; then
  if [[ ${FASEG_REQUIRE_CUDA_BUILD:-0} == 1 ]]; then die "nvcc not found (FASEG_REQUIRE_CUDA_BUILD=1)"; fi
  echo "build_cuda: SKIPPED: nvcc not found (set CUDACXX or install the CUDA toolkit)"
  exit 0
fi
command -v cmake >/dev/null || die "cmake not found"

python=${FASEG_PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $repo_root/.venv/bin/python ]]; then python=$repo_root/.venv/bin/python; else python=python3; fi
fi

trt_include=$("$here/fetch_trt_headers.sh")
ort_include=$("$here/fetch_ort_headers.sh")

# PyTorch binding: compile only, -O0 (torch.utils.cpp_extension builds it for real on a CUDA machine).
# Runs in the background while CMake builds the libraries.
torch_ext_status="skipped: torch not importable with $python"
torch_ext_obj=$build_dir/torch_ext/faseg_torch_ext.o
torch_ext_pid=
trap 'if [[ -n $torch_ext_pid ]]; then kill "$torch_ext_pid" 2>/dev/null || true; fi' EXIT
mkdir -p "$build_dir/torch_ext"
if torch_flags=$("$python" - <<'PY' 2>/dev/null
import sysconfig
from pathlib import Path

import torch
from torch.utils import cpp_extension

flags = [f"-isystem{p}" for p in cpp_extension.include_paths()]
flags.append(f"-isystem{sysconfig.get_paths()['include']}")
abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
flags += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-DTORCH_EXTENSION_NAME=faseg_torch_ext", "-DTORCH_API_INCLUDE_EXTENSION_H"]
# CPU wheels ship the c10/cuda headers without their generated config header.
if not any(Path(p, "c10/cuda/impl/cuda_cmake_macros.h").is_file() for p in cpp_extension.include_paths()):
    flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
print(" ".join(flags))
PY
); then
  torch_ext_status="compiled"
  src=$here/torch_ext/faseg_torch_ext.cpp
  if [[ ! -f $torch_ext_obj || $src -nt $torch_ext_obj || $here/cuda/ms_deform_attn_kernel.h -nt $torch_ext_obj ||
    $here/cuda/topk_cross_attn_kernel.h -nt $torch_ext_obj ]]; then
    # The CUDA include directory as nvcc sees it (nvcc may be a wrapper script outside the toolkit).
    cuda_include=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
      sed -nE 's/.*INCLUDES="-I([^"]+)".*/\1/p' | head -n 1)
    [[ -d $cuda_include ]] || die "cannot find the CUDA include directory from $nvcc --dryrun"
    log "compiling the PyTorch binding against $("$python" -c 'import torch; print(torch.__version__)') headers"
    (
      # shellcheck disable=SC2086  # torch_flags is a list of flags
      c++ -std=c++17 -O0 -fPIC -Wall -Wno-unused-function $torch_flags -isystem "$cuda_include" \
        -c "$src" -o "$torch_ext_obj.tmp" >&2 && mv "$torch_ext_obj.tmp" "$torch_ext_obj"
    ) &
    torch_ext_pid=$!
  fi
fi

configure=1
if [[ -f $build_dir/CMakeCache.txt ]] &&
  grep -qxF "TRT_INCLUDE_DIR:PATH=$trt_include" "$build_dir/CMakeCache.txt" &&
  grep -qxF "ORT_INCLUDE_DIR:PATH=$ort_include" "$build_dir/CMakeCache.txt" &&
  grep -qxF "FASEG_CUDA_ARCHITECTURES:STRING=$archs" "$build_dir/CMakeCache.txt"; then
  configure=0
fi
if ((configure)); then
  generator=()
  if [[ ! -f $build_dir/CMakeCache.txt ]] && command -v ninja >/dev/null; then generator=(-G Ninja); fi
  log "configuring $build_dir (nvcc: $nvcc, architectures: $archs)"
  cmake -S "$here" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_COMPILER="$nvcc" -DFASEG_CUDA_ARCHITECTURES="$archs" \
    -DTRT_INCLUDE_DIR="$trt_include" -DORT_INCLUDE_DIR="$ort_include" >&2
fi
cmake --build "$build_dir" --parallel >&2

kernels=$build_dir/cuda/libfaseg_cuda_kernels.so
plugins=$build_dir/tensorrt/libfaseg_trt_plugins.so
ort_ops=$build_dir/ort/libfaseg_ort_ops.so
harness=$build_dir/tensorrt/faseg_trt_plugin_host_check
gpu_harness=$build_dir/tensorrt/faseg_trt_plugin_harness  # driven by tests/export/test_trt_plugin_harness.py
for f in "$kernels" "$plugins" "$ort_ops" "$harness" "$gpu_harness"; do [[ -f $f ]] || die "$f was not produced"; done

log "running the host-only plugin check"
"$harness" "$plugins" >"$build_dir/plugin_host_check.json" || die "plugin host check failed (see $build_dir/plugin_host_check.json)"

if [[ -n $torch_ext_pid ]]; then
  wait "$torch_ext_pid" || die "compiling the PyTorch binding failed"
  torch_ext_pid=
fi

seconds=$(($(date +%s) - start))
"$python" - "$build_dir" "$nvcc" "$archs" "$trt_include" "$ort_include" "$torch_ext_status" "$seconds" <<'PY'
import json
import re
import subprocess
import sys
from pathlib import Path

build_dir, nvcc, archs, trt_include, ort_include, torch_ext, seconds = sys.argv[1:]
build = Path(build_dir)


def sass_archs(path: Path) -> list[str]:
    """sm_XY of every CUDA cubin embedded in an ELF file (ELF e_machine 190, arch in e_flags bits 8-15)."""
    data = path.read_bytes()
    found = set()
    for m in re.finditer(b"\x7fELF", data):
        off = m.start()
        if data[off + 18 : off + 20] == (190).to_bytes(2, "little"):
            flags = int.from_bytes(data[off + 48 : off + 52], "little")
            found.add(f"sm_{(flags >> 8) & 0xFF}")
    return sorted(found)


def exported(path: Path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=False)
    return sorted(line.split()[-1] for line in out.stdout.splitlines() if " T " in line)


def needed(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=False)
    return re.findall(r"\(NEEDED\).*\[(.+)\]", out.stdout)


version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
nvcc_version = (re.findall(r"release ([\d.]+)", version) or ["?"])[0]
artifacts = {}
for name, rel in {
    "cuda_kernels": "cuda/libfaseg_cuda_kernels.so",
    "trt_plugins": "tensorrt/libfaseg_trt_plugins.so",
    "ort_ops_cuda": "ort/libfaseg_ort_ops.so",
}.items():
    path = build / rel
    artifacts[name] = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sass": sass_archs(path),
        "exports": exported(path),
        "needed": needed(path),
    }
objects = sorted(str(p.relative_to(build)) for p in build.rglob("*.o") if "CompilerId" not in str(p))
stamp = Path(trt_include).parent.parent / ".complete"
manifest = {
    "nvcc": nvcc,
    "nvcc_version": nvcc_version,
    "cuda_architectures": archs,
    "trt_include_dir": trt_include,
    "trt_headers": stamp.read_text() if stamp.is_file() else "",
    "ort_include_dir": ort_include,
    "artifacts": artifacts,
    "objects": objects,
    "torch_ext": torch_ext,
    "plugin_host_check": json.loads((build / "plugin_host_check.json").read_text()),
    "seconds": int(seconds),
}
(build / "compile_check.json").write_text(json.dumps(manifest, indent=2) + "\n")
checks = manifest["plugin_host_check"]["checks"]
print(f"build_cuda: nvcc {nvcc_version}, architectures {archs}, {seconds} s")
for name, a in artifacts.items():
    print(f"  {name:<13} {a['path']} ({a['bytes'] / 1e6:.1f} MB; SASS {', '.join(a['sass']) or 'none'}; "
          f"NEEDED {', '.join(a['needed'])})")
print(f"  objects       {len(objects)} under {build}")
print(f"  host check    {sum(c['ok'] for c in checks)}/{len(checks)} plugin checks passed")
print(f"  torch binding {torch_ext}")
print(f"  manifest      {build / 'compile_check.json'}")
PY
