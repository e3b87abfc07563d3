#!/usr/bin/env bash
# faseg-build-engines: build, or load from the engine-cache volume, one TensorRT engine per input bucket,
# then print on stdout the path of the first bucket's engine, or with FASEG_ENGINE_OUTPUT=repository the
# path of a model repository holding every bucket (what the GPU image's entrypoint serves, with
# FASEG_MODEL_REPOSITORY: docs/service.md, "Model repository"). Logs go to stderr. The entrypoint calls it
# when FASEG_ENGINE_BUCKETS is set.
#
# For each bucket HxW:  faseg export onnx --checkpoint C --size HxW --flavour F --precision P --out <dir>/model.onnx
#                       faseg export trt  --onnx <dir>/model.onnx --out <dir>/model.plan --batch-profile 1,OPT,B
#                                         --timing-cache <cache>/timing.cache [--plugins L]
# (TensorRT engines are strongly typed: the precision is the ONNX file's; `export trt` writes the metadata
# sidecar model.json that the tensorrt backend reads.)
# into FASEG_ENGINE_CACHE/<key>/, where <key> hashes everything the engine depends on: the checkpoint's
# files, the bucket, precision, flavour, max batch size, the faseg and TensorRT versions, the GPU model and
# compute capability, and the plugin library. A cache hit does no export and no build, so a restart (or a
# second replica sharing the volume) is ready in seconds. Builds hold a lock on the cache, so replicas
# sharing it build each engine once; a build is written to a temporary directory and renamed, so a crash
# never leaves a half-written engine behind.
#
# Environment (defaults in brackets):
#   FASEG_ENGINE_BUCKETS     comma list of HxW input sizes, multiples of 32, e.g. "512x512,512x1024" (required)
#   FASEG_CHECKPOINT         checkpoint directory [the bundled demo model]
#   FASEG_ENGINE_CACHE       cache directory (mount a volume here) [$FASEG_CACHE_DIR/engines]
#   FASEG_ENGINE_BACKEND     tensorrt: native engines (above) | onnxruntime: export the ONNX files only and
#                            let ONNX Runtime's TensorRT EP build its engines during warm-up, cached under
#                            FASEG_CACHE_DIR [tensorrt; onnxruntime when this faseg has no `export trt`]
#   FASEG_ENGINE_PRECISION   fp32 | fp16 (mixed fp16/fp32 ONNX from `faseg export onnx --precision fp16`) [fp32]
#   FASEG_ENGINE_FLAVOUR     plugin | portable ONNX ops [plugin for tensorrt, portable for onnxruntime]
#   FASEG_MAX_BATCH_SIZE     largest batch of the engine's optimisation profile (the service's setting) [8];
#                            the profile is 1, ceil(B/2), B
#   FASEG_PLUGIN_LIBRARY     TensorRT plugin library (the GPU image sets it)
#   FASEG_TRT_EXPORT_ARGS    extra arguments for `faseg export trt` (word-split)
#   FASEG_ENGINE_OUTPUT      file: print the first bucket's engine | repository: lay the engines out as
#                            <cache>/repositories/<key>/<model>/1/<HxW>.plan (+ <HxW>.json metadata; .onnx
#                            with onnxruntime) and print that repository [file]
#   FASEG_MODEL_NAME         the model's name in the repository [the checkpoint directory's name]
# Exit status: 0 with a path on stdout; 2 for bad settings; 1 when an export or build fails.
set -euo pipefail

log() { printf 'faseg-build-engines: %s\n' "$*" >&2; }
die() { log "error: $*"; exit "${2:-1}"; }

buckets=${FASEG_ENGINE_BUCKETS:-}
backend=${FASEG_ENGINE_BACKEND:-tensorrt}
precision=${FASEG_ENGINE_PRECISION:-fp32}
max_batch=${FASEG_MAX_BATCH_SIZE:-8}
cache_root=${FASEG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/faseg}
cache=${FASEG_ENGINE_CACHE:-$cache_root/engines}
plugin_lib=${FASEG_PLUGIN_LIBRARY:-}

[[ -n $buckets ]] || die "FASEG_ENGINE_BUCKETS is empty (e.g. 512x512,512x1024)" 2
case $backend in
  tensorrt) flavour=${FASEG_ENGINE_FLAVOUR:-plugin} ;;
  onnxruntime) flavour=${FASEG_ENGINE_FLAVOUR:-portable} ;;
  *) die "FASEG_ENGINE_BACKEND=$backend: expected tensorrt or onnxruntime" 2 ;;
esac
[[ $precision == fp16 || $precision == fp32 ]] || die "FASEG_ENGINE_PRECISION=$precision: expected fp16 or fp32" 2
[[ $flavour == plugin || $flavour == portable ]] || die "FASEG_ENGINE_FLAVOUR=$flavour: expected plugin or portable" 2
[[ $max_batch =~ ^[1-9][0-9]*$ ]] || die "FASEG_MAX_BATCH_SIZE=$max_batch: expected a positive integer" 2
output=${FASEG_ENGINE_OUTPUT:-file}
[[ $output == file || $output == repository ]] || die "FASEG_ENGINE_OUTPUT=$output: expected file or repository" 2
IFS=, read -r -a bucket_list <<<"${buckets// /}"
for b in "${bucket_list[@]}"; do
  [[ $b =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "bucket '$b': expected HxW, e.g. 512x512" 2
  ((BASH_REMATCH[1] % 32 == 0 && BASH_REMATCH[2] % 32 == 0)) || die "bucket '$b': H and W must be multiples of 32" 2
done

if [[ $backend == tensorrt ]] && ! faseg export trt --help >/dev/null 2>&1; then
  # This faseg has no `export trt` yet: ONNX Runtime's TensorRT EP builds and caches the engines instead.
  log "warning: \`faseg export trt\` is not available; falling back to FASEG_ENGINE_BACKEND=onnxruntime"
  backend=onnxruntime
  flavour=${FASEG_ENGINE_FLAVOUR:-portable}
fi

checkpoint=${FASEG_CHECKPOINT:-}
if [[ -z $checkpoint ]]; then
  checkpoint=$(python3 -c 'from faseg.model.demo import demo_checkpoint_dir; print(demo_checkpoint_dir())') ||
    die "FASEG_CHECKPOINT is not set and the bundled demo model is missing" 2
fi
[[ -f $checkpoint/config.json ]] || die "FASEG_CHECKPOINT=$checkpoint has no config.json" 2

mkdir -p "$cache" || die "cannot create the engine cache $cache (mount a writable volume there)"
[[ -w $cache ]] || die "the engine cache $cache is not writable by uid $(id -u)"

# What an engine depends on besides the bucket. GPU and TensorRT identify the machine the engine is for:
# TensorRT engines are specific to both.
gpu=$( (nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>/dev/null || true) | head -n 1)
trt_version=$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || echo none)
faseg_version=$(python3 -c 'import faseg; print(faseg.__version__)' 2>/dev/null || echo unknown)
if [[ $backend == tensorrt && $trt_version == none ]]; then
  die "FASEG_ENGINE_BACKEND=tensorrt but the tensorrt Python module is not importable in this image" 2
fi
fingerprint() {
  {
    printf 'bucket=%s precision=%s flavour=%s max_batch=%s backend=%s\n' "$1" "$precision" "$flavour" "$max_batch" "$backend"
    printf 'faseg=%s tensorrt=%s gpu=%s extra=%s\n' "$faseg_version" "$trt_version" "$gpu" "${FASEG_TRT_EXPORT_ARGS:-}"
    find "$checkpoint" -maxdepth 1 -type f \( -name '*.json' -o -name '*.safetensors' \) -print0 | sort -z | xargs -0 sha256sum
    if [[ -n $plugin_lib && -f $plugin_lib ]]; then sha256sum "$plugin_lib"; fi
  } | sha256sum | cut -c1-16
}

lock() {
  # One builder at a time per cache (replicas may share the volume). flock is in util-linux.
  exec 9>"$cache/.lock"
  if ! flock -n 9; then
    log "another container is building engines in $cache; waiting for it"
    flock 9
  fi
}

served=
artifacts=()
keys=()
for b in "${bucket_list[@]}"; do
  key="${b}-${precision}-$(fingerprint "$b")"
  keys+=("$key")
  dir=$cache/$key
  if [[ $backend == tensorrt ]]; then artifact=$dir/model.plan; else artifact=$dir/model.onnx; fi
  if [[ ! -f $artifact ]]; then
    [[ ${lock_held:-0} == 1 ]] || { lock; lock_held=1; }
  fi
  if [[ -f $artifact ]]; then
    log "bucket $b: cached $artifact"
  else
    tmp=$(mktemp -d "$cache/.build-$key.XXXXXX")
    start=$(date +%s)
    log "bucket $b: exporting ONNX ($flavour flavour) from $checkpoint"
    faseg export onnx --checkpoint "$checkpoint" --size "$b" --flavour "$flavour" --precision "$precision" \
      --out "$tmp/model.onnx" >&2 ||
      { rm -rf "$tmp"; die "bucket $b: faseg export onnx failed"; }
    if [[ $backend == tensorrt ]]; then
      args=(--onnx "$tmp/model.onnx" --out "$tmp/model.plan" --batch-profile "1,$(((max_batch + 1) / 2)),$max_batch"
        --timing-cache "$cache/timing.cache")
      [[ -n $plugin_lib ]] && args+=(--plugins "$plugin_lib")
      # shellcheck disable=SC2206  # word-splitting the extra arguments is the point
      [[ -n ${FASEG_TRT_EXPORT_ARGS:-} ]] && args+=($FASEG_TRT_EXPORT_ARGS)
      log "bucket $b: building the TensorRT engine ($precision, batch 1..$max_batch); this takes minutes"
      faseg export trt "${args[@]}" >&2 || { rm -rf "$tmp"; die "bucket $b: faseg export trt failed"; }
    fi
    printf '{"bucket": "%s", "precision": "%s", "flavour": "%s", "max_batch_size": %s, "backend": "%s", "tensorrt": "%s", "gpu": "%s", "faseg": "%s", "checkpoint": "%s", "seconds": %s}\n' \
      "$b" "$precision" "$flavour" "$max_batch" "$backend" "$trt_version" "$gpu" "$faseg_version" "$checkpoint" \
      "$(($(date +%s) - start))" >"$tmp/build.json"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    log "bucket $b: built $artifact in $(($(date +%s) - start)) s"
  fi
  [[ -n $served ]] || served=$artifact
  artifacts+=("$artifact")
done
if [[ $output == file ]]; then
  if ((${#bucket_list[@]} > 1)); then
    log "serving the first bucket (${bucket_list[0]}); FASEG_ENGINE_OUTPUT=repository serves them all"
  fi
  echo "$served"
  exit 0
fi

# A repository of one model, version 1, one file per bucket (symbolic links into the cache). Its key covers
# every engine in it; it is written to a temporary directory and renamed, so readers never see half of it.
name=${FASEG_MODEL_NAME:-$(basename "$checkpoint")}
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "model name '$name': use letters, digits, '.', '_', '-'" 2
repository=$cache/repositories/$(printf '%s\n' "$name" "${keys[@]}" | sha256sum | cut -c1-16)
if [[ ! -d $repository/$name/1 ]]; then
  mkdir -p "$cache/repositories"
  tmp=$(mktemp -d "$cache/repositories/.build.XXXXXX")
  mkdir -p "$tmp/$name/1"
  for i in "${!bucket_list[@]}"; do
    artifact=${artifacts[$i]}
    ln -s "$artifact" "$tmp/$name/1/${bucket_list[$i]}.${artifact##*.}"
    sidecar=${artifact%.*}.json
    if [[ ${artifact##*.} == plan && -f $sidecar ]]; then ln -s "$sidecar" "$tmp/$name/1/${bucket_list[$i]}.json"; fi
  done
  mv -T "$tmp" "$repository" 2>/dev/null || rm -rf "$tmp" # another replica laid it out first
fi
log "model repository $repository: model $name, buckets ${bucket_list[*]}"
echo "$repository"
