"""KServe v2 / Open Inference Protocol surface, so tritonclient works unchanged.

The model takes ``IMAGE``, a BYTES tensor of encoded images ([N] or [N, 1]), and returns ``LABELS``
(UINT8, or UINT16 past 256 classes, [N, H, W]) and ``STATS`` (BYTES, [N, 1], one JSON document per image).
Readiness answers 503 rather than Triton's 400. Request parameters: ``timeout`` (microseconds, as in
Triton; can only lower the server's deadline) and ``output_size`` (``original`` | ``model``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

import faseg

from ...core.errors import InvalidRequest, ServiceError, TooManyImages
from ...core.lifecycle import Lifecycle
from ...imaging.preprocess import bucket_name
from ...kserve import HEADER_LENGTH, NUMPY_TO_V2, OutputTensor, bytes_elements, encode_response, parse_request
from ...model_version import ServedVersion
from ...pipeline import LABELS_OUTPUT, PreparedImage, RenderedImage, SegmentOptions
from ...runtime import Runtime
from ..body import SegmentJob, read_body, segment_request
from ..deps import LifecycleDep, MetricsDep, RuntimeDep
from ..schemas import V2ErrorResponse
from .segment import MAX_TIMEOUT_MS, MIN_TIMEOUT_MS

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

INPUT_IMAGE = "IMAGE"
OUTPUT_LABELS = "LABELS"
OUTPUT_STATS = "STATS"
OUTPUT_NAMES = (OUTPUT_LABELS, OUTPUT_STATS)
US_PER_MS = 1000
V2_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2ErrorResponse} for code in (400, 404, 413, 415, 429, 503, 504)
}
ModelName = Annotated[str, Path(description="Model name")]
ModelVersion = Annotated[str, Path(description="Model version (with --model FILE: 1)")]


def _check_model(runtime: Runtime, model: str, version: str | None = None) -> ServedVersion:
    """The ready version a request names: 404 for an unknown model or version, 503 when not ready."""
    return runtime.registry.resolve(model, version or None)


def _model_readiness(runtime: Runtime, lifecycle: Lifecycle, model: str, version: str | None) -> JSONResponse:
    try:
        served = _check_model(runtime, model, version)
    except ServiceError as exc:
        if exc.status == 404:
            raise
        return _readiness(False, {"name": model, "ready": False, "reason": exc.message})
    ready = lifecycle.ready and served.ready
    return _readiness(ready, {"name": model, "version": served.version, "ready": ready})


def _readiness(ready: bool, body: dict[str, Any]) -> JSONResponse:
    """200 when ready, 503 otherwise (Triton answers 400; a 5xx is what load balancers understand)."""
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "faseg",
        "version": faseg.__version__,
        "extensions": ["binary_tensor_data", "statistics", "model_configuration", "model_repository"],
    }


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Server readiness (503 when not ready)")
async def ready(lifecycle: LifecycleDep) -> JSONResponse:
    return _readiness(lifecycle.ready, {"ready": lifecycle.ready})


@router.get("/models/stats", summary="Statistics of all models", responses=V2_ERRORS)
async def all_stats(runtime: RuntimeDep, metrics: MetricsDep) -> dict[str, Any]:
    served = runtime.registry.served()
    return {"model_stats": [metrics.stats(v.name, v.version).as_json(v.name, v.version) for v in served]}


def _metadata(runtime: Runtime, served: ServedVersion) -> dict[str, Any]:
    backend = served.primary.backend
    label_type = NUMPY_TO_V2[backend.info.label_dtype]
    ready = runtime.registry.models[served.name].ready_versions()
    return {
        "name": served.name,
        "versions": [v.version for v in ready],
        "platform": f"faseg_{backend.name}",
        "parameters": {"buckets": [bucket_name(b) for b in served.buckets], "classes": list(backend.classes)},
        "inputs": [{"name": INPUT_IMAGE, "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [
            {"name": OUTPUT_LABELS, "datatype": label_type, "shape": [-1, -1, -1]},
            {"name": OUTPUT_STATS, "datatype": "BYTES", "shape": [-1, 1]},
        ],
    }


def _config(runtime: Runtime, served: ServedVersion) -> dict[str, Any]:
    backend = served.primary.backend
    policy = served.primary.batcher.policy
    label_type = NUMPY_TO_V2[backend.info.label_dtype]
    return {
        "name": served.name,
        "platform": f"faseg_{backend.name}",
        "backend": backend.name,
        "max_batch_size": policy.max_batch_size,
        "parameters": {"buckets": [bucket_name(b) for b in served.buckets], "default_bucket": served.config.bucket},
        "input": [{"name": INPUT_IMAGE, "data_type": "TYPE_STRING", "dims": [1]}],
        "output": [
            {"name": OUTPUT_LABELS, "data_type": f"TYPE_{label_type}", "dims": [-1, -1]},
            {"name": OUTPUT_STATS, "data_type": "TYPE_STRING", "dims": [1]},
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(policy.max_queue_delay_s * 1_000_000),
            "default_queue_policy": {
                "max_queue_size": policy.max_queue_size,
                "default_timeout_microseconds": runtime.settings.default_timeout_ms * US_PER_MS,
                "allow_timeout_override": True,
            },
        },
    }


@router.get("/models/{model}", summary="Model metadata", responses=V2_ERRORS)
async def model_metadata(model: ModelName, runtime: RuntimeDep) -> dict[str, Any]:
    return _metadata(runtime, _check_model(runtime, model))


@router.get("/models/{model}/versions/{version}", summary="Model metadata", responses=V2_ERRORS)
async def model_version_metadata(model: ModelName, version: ModelVersion, runtime: RuntimeDep) -> dict[str, Any]:
    return _metadata(runtime, _check_model(runtime, model, version))


@router.get("/models/{model}/ready", summary="Model readiness (503 when not ready)", responses=V2_ERRORS)
async def model_ready(model: ModelName, runtime: RuntimeDep, lifecycle: LifecycleDep) -> JSONResponse:
    return _model_readiness(runtime, lifecycle, model, None)


@router.get("/models/{model}/versions/{version}/ready", summary="Model readiness", responses=V2_ERRORS)
async def model_version_ready(
    model: ModelName, version: ModelVersion, runtime: RuntimeDep, lifecycle: LifecycleDep
) -> JSONResponse:
    return _model_readiness(runtime, lifecycle, model, version)


@router.get("/models/{model}/config", summary="Model configuration (Triton's shape)", responses=V2_ERRORS)
async def model_config(model: ModelName, runtime: RuntimeDep) -> dict[str, Any]:
    return _config(runtime, _check_model(runtime, model))


@router.get("/models/{model}/stats", summary="Model statistics (Triton's shape)", responses=V2_ERRORS)
async def model_stats(model: ModelName, runtime: RuntimeDep, metrics: MetricsDep) -> dict[str, Any]:
    served = _check_model(runtime, model)
    return {"model_stats": [metrics.stats(served.name, served.version).as_json(served.name, served.version)]}


def _infer_body() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string"},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    requested = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": tensor},
            "outputs": {"type": "array", "items": requested},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "description": "JSON, or with Inference-Header-Content-Length: a JSON header followed by binary "
            "tensor data (Triton's binary-data extension).",
            "content": {
                "application/json": {"schema": request},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


@router.post("/models/{model}/infer", summary="Inference", responses=V2_ERRORS, openapi_extra=_infer_body())
async def infer(model: ModelName, request: Request, runtime: RuntimeDep, lifecycle: LifecycleDep) -> Response:
    """Segment the images of a BYTES ``IMAGE`` input; JSON or binary-data extension."""
    return await _infer(model, None, request, runtime, lifecycle)


@router.post(
    "/models/{model}/versions/{version}/infer",
    summary="Inference",
    responses=V2_ERRORS,
    openapi_extra=_infer_body(),
)
async def infer_version(
    model: ModelName, version: ModelVersion, request: Request, runtime: RuntimeDep, lifecycle: LifecycleDep
) -> Response:
    return await _infer(model, version, request, runtime, lifecycle)


@dataclass(frozen=True)
class InferCall(SegmentJob):
    """A validated inference request: the images, options and deadline, plus what the answer needs."""

    bucket: str | None  # parameter "bucket": "HxW" or "auto"; None: the model's default
    request_id: str | None
    outputs: list[str]  # output names in the order asked for
    binary: set[str]  # outputs to send as binary data


def _requested_outputs(parsed_outputs: list[Any] | None, binary_default: bool) -> tuple[list[str], set[str]]:
    if parsed_outputs is None:
        names = list(OUTPUT_NAMES)
        return names, set(names) if binary_default else set()
    names, binary = [], set()
    for out in parsed_outputs:
        if out.name not in OUTPUT_NAMES:
            raise InvalidRequest(f"unknown output {out.name!r}; this model has {list(OUTPUT_NAMES)}")
        names.append(out.name)
        if out.parameters.get("binary_data", binary_default):
            binary.add(out.name)
    return names, binary


def _timeout_ms(parameters: dict[str, Any]) -> int | None:
    """Triton's ``timeout`` request parameter (microseconds) in milliseconds."""
    timeout_us = parameters.get("timeout")
    if timeout_us is None:
        return None
    low, high = MIN_TIMEOUT_MS * US_PER_MS, MAX_TIMEOUT_MS * US_PER_MS
    if not isinstance(timeout_us, int) or not low <= timeout_us <= high:
        raise InvalidRequest(f"parameter timeout must be an integer of microseconds in [{low}, {high}]")
    return math.ceil(timeout_us / US_PER_MS)


def parse_call(body: bytes, header_length: str | None, max_images: int) -> InferCall:
    parsed = parse_request(body, header_length)
    header = parsed.header
    if len(header.inputs) != 1 or header.inputs[0].name != INPUT_IMAGE:
        raise InvalidRequest(f"expected exactly one input named {INPUT_IMAGE!r}")
    tensor = header.inputs[0]
    images = bytes_elements(tensor, parsed.binary.get(tensor.name))
    if not images:
        raise InvalidRequest(f"input {INPUT_IMAGE!r} holds no images")
    if len(images) > max_images:
        raise TooManyImages(f"at most {max_images} images per request")
    names, binary = _requested_outputs(header.outputs, bool(header.parameters.get("binary_data_output")))
    bucket = header.parameters.get("bucket")
    if bucket is not None and not isinstance(bucket, str):
        raise InvalidRequest("parameter bucket must be a string: 'HxW' or 'auto'")
    output_size = header.parameters.get("output_size", "original")
    if output_size not in ("original", "model"):
        raise InvalidRequest("parameter output_size must be 'original' or 'model'")
    wanted = {LABELS_OUTPUT} | ({"stats"} if OUTPUT_STATS in names else set())
    return InferCall(
        bucket=bucket,
        request_id=header.id,
        images=images,
        outputs=names,
        binary=binary,
        options=SegmentOptions(outputs=frozenset(wanted), output_size=output_size),
        timeout_ms=_timeout_ms(header.parameters),
    )


def _check_one_size(call: InferCall, images: list[PreparedImage]) -> None:
    output_size = call.options.output_size
    sizes = {p.box.original_size if output_size == "original" else p.box.content_size for p in images}
    if len(sizes) > 1:
        raise InvalidRequest(
            f"the images give label maps of different sizes {sorted(sizes)}; a tensor has one shape: "
            "send such images in separate requests"
        )


def _response(served: ServedVersion, call: InferCall, answers: list[RenderedImage], buckets: list[str]) -> Response:
    tensors = []
    for name in call.outputs:
        if name == OUTPUT_LABELS:
            stacked = np.stack([a.labels for a in answers])  # (N, H, W)
            tensors.append(OutputTensor(name, NUMPY_TO_V2[stacked.dtype], list(stacked.shape), array=stacked))
        else:
            docs = [json.dumps(a.fields.get("stats", []), separators=(",", ":")).encode() for a in answers]
            tensors.append(OutputTensor(name, "BYTES", [len(docs), 1], elements=docs))  # config dims [1]
    content, header_length = encode_response(
        model_name=served.name,
        model_version=served.version,
        request_id=call.request_id,
        outputs=tensors,
        binary=call.binary,
        parameters={"buckets": buckets},
    )
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


async def _infer(model: str, version: str | None, request: Request, runtime: Runtime, lifecycle: Lifecycle) -> Response:
    settings = runtime.settings

    served = _check_model(runtime, model, version)  # an unknown model is a 404 whatever the queue holds

    async def read() -> InferCall:
        body = await read_body(request, settings.max_body_bytes)
        call = parse_call(body, request.headers.get(HEADER_LENGTH), settings.max_images_per_request)
        options = replace(call.options, bucket=served.named_bucket(call.bucket))
        return replace(call, options=options)

    call, outcomes = await segment_request(
        request, served, lifecycle, read, fail_fast=True, check_prepared=_check_one_size
    )
    # The protocol has no per-image errors: fail_fast raised the first one.
    rendered = [o.answer for o in outcomes if isinstance(o.answer, RenderedImage)]
    buckets = [bucket_name(o.prepared.bucket) for o in outcomes if isinstance(o.prepared, PreparedImage)]
    return _response(served, call, rendered, buckets)
