#!/usr/bin/env bash
# Fetch (here, where PyPI is reachable) the wheels that the lent GPU machines' python lacks and the device check
# needs: pydantic and pydantic-settings, which the torch backend's settings import. They go to build/wheels
# (ignored by git; carry it to the device) for the device's CPython 3.12 on x86-64 Linux; gpu_check.py unpacks
# them into a temporary folder there only when the import fails.
#
#   bash benchmarks/gpu_check_wheels.sh [PYTHON_VERSION]      (default 3.12)
set -euo pipefail
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=$repo_root/build/wheels
py=${1:-3.12}
python=${FASEG_PYTHON:-$repo_root/.venv/bin/python}
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# The versions this checkout runs with, so the device sees the same pydantic.
versions=$("$python" - <<'PY'
from importlib.metadata import version
names = ["pydantic", "pydantic-core", "pydantic-settings", "annotated-types", "typing-inspection", "python-dotenv"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
# shellcheck disable=SC2086  # versions is a list of requirements
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" -d "$dest" $versions
ls -l "$dest" >&2
du -sh "$dest"
