#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ headers needed to build libfaseg_ort_ops.so.
#
#   export/plugins/fetch_ort_headers.sh [CACHE_DIR]      (default: <repo>/build/ort-headers)
#
# Prints the include directory (the one holding onnxruntime_cxx_api.h) on stdout; logs go to stderr.
#
# Source: Debian trixie's libonnxruntime-dev (1.21, ORT_API_VERSION 21; the C API is backward
# compatible, so a library built against it loads in newer runtimes such as ORT 1.31). The pip wheel of
# onnxruntime ships no headers. The package is fetched with `apt-get download` against a *private* apt
# configuration (own sources list, lists, cache and an empty dpkg status) and unpacked with
# `dpkg-deb -x` into CACHE_DIR: nothing is installed and the system's apt state is not touched.
# Works as root or as a normal user on Debian bookworm (or newer) with only the Debian archive
# reachable. The system's apt.conf (proxies etc.) still applies.
#
# Idempotent: a completed cache is reused without network access. Environment overrides:
#   FASEG_DEBIAN_MIRROR        archive URL (default: the system's Debian mirror, else deb.debian.org)
#   FASEG_DEBIAN_KEYRING       keyring that signs the suite (default: debian-archive-keyring.gpg)
#   FASEG_ORT_HEADERS_SUITE    suite (default: trixie)
#   FASEG_ORT_HEADERS_VERSION  exact package version to fetch (default: the suite's candidate)
set -euo pipefail

log() { printf 'fetch_ort_headers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache=${1:-$repo_root/build/ort-headers}
package=libonnxruntime-dev
suite=${FASEG_ORT_HEADERS_SUITE:-trixie}
version=${FASEG_ORT_HEADERS_VERSION:-}
keyring=${FASEG_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
include_dir=$cache/root/usr/include/onnxruntime
stamp=$cache/.complete

if [[ -f $stamp && -f $include_dir/onnxruntime_cxx_api.h ]]; then
  echo "$include_dir"
  exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (this script needs a Debian-based system)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

# Serialise concurrent runs on the same cache.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
  if [[ -f $stamp && -f $include_dir/onnxruntime_cxx_api.h ]]; then
    echo "$include_dir"
    exit 0
  fi
fi

# Mirror: the one the system already uses for the Debian archive (reachable by construction).
mirror=${FASEG_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(
    {
      grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
      grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
        sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}'
    } | grep -E '/debian/?$' | head -n 1 || true
  )
  mirror=${mirror:-http://deb.debian.org/debian}
fi
mirror=${mirror%/}
[[ -r $keyring ]] || die "keyring $keyring not readable (install debian-archive-keyring or set FASEG_DEBIAN_KEYRING)"

work=$cache/apt
rm -rf "$work" "$cache/root.tmp"
mkdir -p "$work"/{etc/sources.list.d,etc/preferences.d,state/lists/partial,cache/archives/partial,debs}
: >"$work/state/status"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/etc/sources.list"

apt_opts=(
  -o "Dir::Etc::SourceList=$work/etc/sources.list"
  -o "Dir::Etc::SourceParts=$work/etc/sources.list.d"
  -o "Dir::Etc::Preferences=$work/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State=$work/state"
  -o "Dir::State::Lists=$work/state/lists"
  -o "Dir::State::status=$work/state/status"
  -o "Dir::Cache=$work/cache"
  -o "Acquire::Languages=none"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=true"
)

log "downloading $package from $mirror $suite (private apt state in $work)"
apt-get "${apt_opts[@]}" -q update >&2 || die "apt-get update for $suite failed (is $mirror reachable?)"
spec=$package${version:+=$version}
(cd "$work/debs" && apt-get "${apt_opts[@]}" -q download "$spec" >&2) || die "apt-get download $spec failed"
deb=$(find "$work/debs" -maxdepth 1 -name "${package}_*.deb" | head -n 1)
[[ -n $deb ]] || die "no .deb for $package was downloaded"

dpkg-deb -x "$deb" "$cache/root.tmp"
[[ -f $cache/root.tmp/usr/include/onnxruntime/onnxruntime_cxx_api.h ]] ||
  die "$deb does not contain usr/include/onnxruntime/onnxruntime_cxx_api.h"
rm -rf "$cache/root"
mv "$cache/root.tmp" "$cache/root"

pkg_version=$(dpkg-deb -f "$deb" Version)
api_version=$(sed -nE 's/^#define ORT_API_VERSION ([0-9]+).*/\1/p' "$include_dir/onnxruntime_c_api.h")
printf 'package=%s\nversion=%s\nsuite=%s\nmirror=%s\nort_api_version=%s\n' \
  "$package" "$pkg_version" "$suite" "$mirror" "$api_version" >"$stamp"
rm -rf "$work"
log "$package $pkg_version (ORT_API_VERSION $api_version) unpacked into $cache/root"
echo "$include_dir"
