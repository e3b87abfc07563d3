#!/usr/bin/env bash
# Fetch the TensorRT C++ headers needed to compile libfaseg_trt_plugins.so.
#
#   export/plugins/fetch_trt_headers.sh [CACHE_DIR]      (default: <repo>/build/trt-headers)
#
# Prints the include directory (the one holding NvInferRuntime.h) on stdout; logs go to stderr.
#
# Source: the PyPI wheel kernel-lens 2.0.1 (MIT), which ships NVIDIA's TensorRT 10.14.1 headers
# (Apache-2.0) under kernel_lens/include/tensorrt/. TensorRT itself cannot be installed on the
# development and CI machines (its PyPI libs are stubs that download from NVIDIA's own index), and
# the headers must not be committed. The wheel is downloaded with pip (`pip download --no-deps`,
# nothing installed), checked against a pinned SHA-256, and only the headers (plus the wheel's
# license files) are unpacked into CACHE_DIR. Idempotent: a completed cache is reused without
# network access. Environment overrides:
#   FASEG_PYTHON           interpreter whose pip downloads the wheel (default: <repo>/.venv/bin/python,
#                          else python3)
#   FASEG_TRT_HEADERS_DIR  a directory that already holds NvInferRuntime.h (skips the download)
set -euo pipefail

log() { printf 'fetch_trt_headers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)

if [[ -n ${FASEG_TRT_HEADERS_DIR:-} ]]; then
  [[ -f $FASEG_TRT_HEADERS_DIR/NvInferRuntime.h ]] || die "FASEG_TRT_HEADERS_DIR=$FASEG_TRT_HEADERS_DIR has no NvInferRuntime.h"
  (cd "$FASEG_TRT_HEADERS_DIR" && pwd)
  exit 0
fi

cache=${1:-$repo_root/build/trt-headers}
wheel_spec=kernel-lens==2.0.1
wheel_name=kernel_lens-2.0.1-py3-none-any.whl
wheel_sha256=07cc714e8b5e7f34b672f7c7fad93febe7c747be5837ba276b1527370134ffe0

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
include_dir=$cache/include/tensorrt
stamp=$cache/.complete
if [[ -f $stamp && -f $include_dir/NvInferRuntime.h ]]; then
  echo "$include_dir"
  exit 0
fi

python=${FASEG_PYTHON:-}
if [[ -z $python ]]; then
  if [[ -x $repo_root/.venv/bin/python ]]; then python=$repo_root/.venv/bin/python; else python=python3; fi
fi
"$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (set FASEG_PYTHON)"

if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
  if [[ -f $stamp && -f $include_dir/NvInferRuntime.h ]]; then
    echo "$include_dir"
    exit 0
  fi
fi

rm -rf "$cache/wheel" "$cache/include.tmp"
mkdir -p "$cache/wheel"
log "downloading $wheel_spec (TensorRT headers) with $python -m pip download"
"$python" -m pip download --quiet --no-deps --only-binary :all: --dest "$cache/wheel" "$wheel_spec" >&2 ||
  die "pip download $wheel_spec failed (is PyPI reachable?)"
wheel=$cache/wheel/$wheel_name
[[ -f $wheel ]] || die "pip did not produce $wheel_name"
got=$(sha256sum "$wheel" | awk '{print $1}')
[[ $got == "$wheel_sha256" ]] || die "$wheel_name has SHA-256 $got, expected $wheel_sha256"

"$python" - "$wheel" "$cache/include.tmp" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "kernel_lens/include/tensorrt/"
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and n.endswith(".h")]
    licenses = [n for n in z.namelist() if ".dist-info/" in n and "LICENSE" in n.upper()]
    if not names:
        sys.exit(f"{wheel} has no {prefix}*.h")
    for name in names:
        target = dest / "tensorrt" / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
    for name in licenses:
        target = dest / "licenses" / Path(name).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
PY
rm -rf "$cache/include"
mv "$cache/include.tmp" "$cache/include"
rm -rf "$cache/wheel"

version=$(awk '/#define TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE/ {printf "%s%s", sep, $3; sep="."}' "$include_dir/NvInferVersion.h")
printf 'wheel=%s\nsha256=%s\ntensorrt_headers=%s\n' "$wheel_spec" "$wheel_sha256" "$version" >"$stamp"
log "TensorRT $version headers from $wheel_spec unpacked into $cache/include"
echo "$include_dir"
