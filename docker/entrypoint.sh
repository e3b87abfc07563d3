#!/usr/bin/env bash
# Entrypoint of the FASeg images (docker/Dockerfile and docker/Dockerfile.cpu share it).
#
#   faseg-entrypoint [serve] [FLAGS...]   choose the model (below), then exec `faseg serve FLAGS...`
#   faseg-entrypoint healthcheck          exit 0 when GET /readyz answers 200 (the image's HEALTHCHECK)
#   faseg-entrypoint requirements ...     (build time) print pyproject dependencies, see `requirements` below
#   faseg-entrypoint COMMAND [ARGS...]    exec anything else (`faseg info`, `bash`, ...)
#
# Which model `serve` serves, first match wins:
#   1. FASEG_MODEL (or --model) as given: a mounted .onnx file, TensorRT engine or checkpoint directory;
#   2. FASEG_ENGINE_BUCKETS set (GPU image): faseg-build-engines builds, or loads from the cache volume, one
#      TensorRT engine per bucket for FASEG_CHECKPOINT (default: the bundled demo model) and the first is served;
#   3. the demo model ONNX baked into the image at build time (FASEG_BAKED_MODEL);
#   4. nothing: `faseg serve` exports the bundled demo model on first start (needs torch in the image).
# Settings are FASEG_* environment variables (docs/service.md). The server runs as PID 1's child under
# tini, gets SIGTERM directly, drains (FASEG_DRAIN_DELAY_S + FASEG_DRAIN_TIMEOUT_S) and exits 0.
set -euo pipefail

log() { printf 'faseg-entrypoint: %s\n' "$*" >&2; }

healthcheck() {
  # No curl in the slim image: Python's urllib. Any non-200 (503 while warming up or draining) fails.
  exec python3 - <<'PY'
import os, sys, urllib.request
port = os.environ.get("FASEG_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=float(os.environ.get("FASEG_HEALTHCHECK_TIMEOUT_S", "3"))) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:  # HTTPError (503), connection refused, timeout
    print(f"not ready: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

# requirements PYPROJECT [--exclude "a b"] [--only "a b"] [--replace old=new ...]
# Prints the [project] dependencies of PYPROJECT, one per line, for `pip install -r /dev/stdin`, so the
# dependency layer of an image depends on pyproject.toml alone (cached until it changes). Names compare
# normalised (PEP 503). --exclude drops names, --only keeps only those, --replace swaps a distribution
# keeping its version spec (onnxruntime=onnxruntime-gpu).
requirements() {
  exec python3 - "$@" <<'PY'
import re, sys, tomllib
args = sys.argv[1:]
path, exclude, only, replace = args.pop(0), set(), None, {}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
while args:
    opt, val = args.pop(0), args.pop(0)
    if opt == "--exclude":
        exclude |= {norm(n) for n in val.split()}
    elif opt == "--only":
        only = {norm(n) for n in val.split()}
    elif opt == "--replace":
        old, new = val.split("=", 1)
        replace[norm(old)] = new
    else:
        sys.exit(f"requirements: unknown option {opt}")
with open(path, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", dep).group(1)
    key = norm(name)
    if key in exclude or (only is not None and key not in only):
        continue
    if key in replace:
        dep = replace[key] + dep.strip()[len(name):]
    print(dep.strip())
PY
}

serve() {
  # Compose passes unset variables as empty strings: treat those as unset.
  for v in FASEG_MODEL FASEG_MODEL_NAME FASEG_MODEL_REPOSITORY FASEG_CHECKPOINT FASEG_ENGINE_BUCKETS; do
    if [[ -z ${!v:-} ]]; then unset "$v"; fi
  done
  local arg model_flag=0
  for arg in "$@"; do
    if [[ $arg == --model || $arg == --model=* || $arg == --model-repository* ]]; then model_flag=1; fi
  done
  if [[ -z ${FASEG_MODEL:-} && -z ${FASEG_MODEL_REPOSITORY:-} && $model_flag == 0 ]]; then
    if [[ -n ${FASEG_ENGINE_BUCKETS:-} ]]; then
      # The builder lays out every bucket's engine (or ONNX file) as a model repository and prints its path
      # on stdout; its logs go to stderr. The model is named after its checkpoint.
      FASEG_MODEL_NAME=${FASEG_MODEL_NAME:-$(basename "${FASEG_CHECKPOINT:-faseg_demo}")}
      FASEG_MODEL_REPOSITORY=$(FASEG_ENGINE_OUTPUT=repository FASEG_MODEL_NAME=$FASEG_MODEL_NAME faseg-build-engines)
      unset FASEG_MODEL_NAME # the repository's directory names the model
      export FASEG_MODEL_REPOSITORY
      log "serving the model repository $FASEG_MODEL_REPOSITORY"
    elif [[ -n ${FASEG_BAKED_MODEL:-} && -f ${FASEG_BAKED_MODEL} ]]; then
      export FASEG_MODEL=$FASEG_BAKED_MODEL
    elif ! python3 -c 'import torch' 2>/dev/null; then
      log "error: no model: this image has no baked demo model and no torch to export one;" \
        "mount a model and set FASEG_MODEL=/models/<file>.onnx (or .plan, or a checkpoint directory)"
      exit 2
    fi
  fi
  exec faseg serve "$@"
}

case "${1:-serve}" in
  serve) shift || true; serve "$@" ;;
  healthcheck) healthcheck ;;
  requirements) shift; requirements "$@" ;;
  -*) serve "$@" ;;  # flags only: `docker run IMAGE --max-batch-size 4`
  *) exec "$@" ;;
esac
