#!/usr/bin/env bash
# Container checks for CI and developers: set up podman + docker-compose on this Debian machine, then run
# the container tests (tests/deployment/): docker-compose config for every profile, the CPU image built and run
# (non-root, ready, real photographs, /metrics, SIGTERM drain), and the `cpu` compose stack through podman's
# Docker-compatible socket (two replicas behind nginx, Prometheus).
#
#   bash docker/ci_check.sh [PYTEST_ARGS...]
#
# Needs root (apt-get, rootful podman) and ../shared/tools/container-base.sh (the local python:3.11-slim
# stand-in; no registry is reachable). Uses the repository's .venv (make setup) for pytest. Environment:
#   FASEG_CONTAINER_BASE   path of container-base.sh [../shared/tools/container-base.sh]
#   FASEG_IMAGE_BUILD_ARGS extra `podman build` args (default: the local CPU torch wheel, see tests/deployment)
# Exit status: pytest's. Containers, the podman socket and compose projects it started are removed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
start=$(date +%s)
log() { printf '\n=== [%ss] %s\n' "$(($(date +%s) - start))" "$*" >&2; }

base=${FASEG_CONTAINER_BASE:-$repo/../shared/tools/container-base.sh}
[[ -f $base ]] || { echo "ci_check: $base not found (set FASEG_CONTAINER_BASE)" >&2; exit 1; }
[[ -x .venv/bin/pytest ]] || { echo "ci_check: no .venv/bin/pytest (run make setup)" >&2; exit 1; }

eval "$(bash "$base" --print-env)"  # CONTAINERS_CONF
# container-base.sh re-imports the base images on every run (new image IDs: every layer cache below would
# miss), so run it only when podman or the python:3.11-slim stand-in is missing.
if command -v podman >/dev/null && [[ -f $CONTAINERS_CONF ]] && podman image exists python:3.11-slim; then
  log "podman and python:3.11-slim present: container-base.sh skipped"
else
  log "podman and the local base images (container-base.sh)"
  nice -n 10 bash "$base" >/tmp/faseg-container-base.log 2>&1 || { tail -n 30 /tmp/faseg-container-base.log >&2; exit 1; }
fi

if ! command -v docker-compose >/dev/null; then
  log "apt-get install docker-compose"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi

# One podman API socket for docker-compose, stopped on exit.
sock_dir=$(mktemp -d)
podman system service --time=0 "unix://$sock_dir/podman.sock" >/dev/null 2>&1 &
service_pid=$!
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { kill "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; rm -rf "$sock_dir"; }
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $sock_dir/podman.sock ]] && break; sleep 0.1; done
export DOCKER_HOST=unix://$sock_dir/podman.sock

# Build the CPU image once (the layer cache makes an unchanged rebuild take seconds); the tests reuse it.
log "podman build docker/Dockerfile.cpu"
build_args=()
if [[ -n ${FASEG_IMAGE_BUILD_ARGS:-} ]]; then
  read -r -a build_args <<<"$FASEG_IMAGE_BUILD_ARGS"
elif compgen -G '/opt/wheels/torch-*+cpu-*.whl' >/dev/null; then
  build_args=(--build-context wheels=/opt/wheels --build-arg TORCH_INDEX_URL=)
fi
nice -n 10 podman build --format docker -f docker/Dockerfile.cpu -t localhost/faseg:cpu-test "${build_args[@]}" . \
  >/tmp/faseg-cpu-image-build.log 2>&1 || { tail -n 40 /tmp/faseg-cpu-image-build.log >&2; exit 1; }
podman image inspect --format 'faseg:cpu image: {{.Size}} bytes' localhost/faseg:cpu-test >&2

log "pytest tests/deployment"
export FASEG_CPU_IMAGE=localhost/faseg:cpu-test FASEG_REQUIRE_COMPOSE=1 FASEG_REQUIRE_CONTAINERS=1
status=0
.venv/bin/pytest tests/deployment -q -p no:cacheprovider "$@" || status=$?
log "done (exit $status)"
exit "$status"
