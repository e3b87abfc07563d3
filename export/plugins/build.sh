#!/usr/bin/env bash
# Build libfaseg_ort_ops.so (ONNX Runtime CPU custom ops of FASeg).
#
#   export/plugins/build.sh [BUILD_DIR]      (default: <repo>/build/ort_ops)
#
# Fetches the ORT headers if needed (fetch_ort_headers.sh, cached in <repo>/build/ort-headers or
# $FASEG_ORT_HEADERS_DIR), configures CMake (Release) once and builds. Prints the path of the .so on
# stdout; logs go to stderr. A second run with nothing changed does no network access and no compile.
# Needs cmake >= 3.18 and a C++17 compiler; uses Ninja when available.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
build_dir=${1:-$repo_root/build/ort_ops}
headers_cache=${FASEG_ORT_HEADERS_DIR:-$repo_root/build/ort-headers}

command -v cmake >/dev/null || { echo "build.sh: cmake not found" >&2; exit 1; }

include_dir=$("$here/fetch_ort_headers.sh" "$headers_cache")

configure=1
if [[ -f $build_dir/CMakeCache.txt ]] &&
  grep -qxF "ORT_INCLUDE_DIR:PATH=$include_dir" "$build_dir/CMakeCache.txt" &&
  grep -qxF "CMAKE_BUILD_TYPE:STRING=Release" "$build_dir/CMakeCache.txt"; then
  configure=0  # cmake --build re-runs the configure step by itself if CMakeLists.txt changed
fi
if ((configure)); then
  generator=()
  if [[ ! -f $build_dir/CMakeCache.txt ]] && command -v ninja >/dev/null; then
    generator=(-G Ninja)
  fi
  cmake -S "$here/ort" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DORT_INCLUDE_DIR="$include_dir" >&2
fi
cmake --build "$build_dir" --parallel >&2

lib=$build_dir/libfaseg_ort_ops.so
[[ -f $lib ]] || { echo "build.sh: $lib was not produced" >&2; exit 1; }
echo "$lib"
