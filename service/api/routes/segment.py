"""``POST /v1/segment`` (one image) and ``POST /v1/segment:batch`` (several, each with its own answer)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import StringConstraints

from ...core.errors import InvalidParameter, ServiceError
from ...imaging.preprocess import Bucket, bucket_name
from ...model_version import ServedVersion
from ...pipeline import OUTPUT_NAMES, PreparedImage, RenderedImage, SegmentOptions
from ...runtime import Runtime
from ..body import SegmentJob, read_images, segment_request
from ..deps import LifecycleDep, MetricsDep, RuntimeDep
from ..errors import count_rejection, error_body
from ..schemas import ERROR_RESPONSES, BatchResponse, SegmentResponse

router = APIRouter(prefix="/v1", tags=["segment"])

PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"
# A deadline below MIN_TIMEOUT_MS cannot be met by decoding and inference; refusing it (422) keeps 504 for
# real slowness on the server's side.
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 3_600_000
_OUTPUT_ALTERNATIVES = "|".join(OUTPUT_NAMES)
OUTPUTS_PATTERN = rf"^({_OUTPUT_ALTERNATIVES})(,({_OUTPUT_ALTERNATIVES}))*$"


@dataclass(frozen=True)
class SegmentParams:
    options: SegmentOptions
    timeout_ms: int | None


async def segment_params(  # async: no thread hop (see ..deps)
    outputs: Annotated[
        list[Annotated[str, StringConstraints(pattern=OUTPUTS_PATTERN)]] | None,
        Query(description="Any of stats, rle, png, overlay; comma-separated or repeated. Default: stats."),
    ] = None,
    output_size: Annotated[
        Literal["original", "model"],
        Query(description="Label outputs at the image's size, or at model resolution (letterbox cropped)."),
    ] = "original",
    timeout_ms: Annotated[
        int | None,
        Query(ge=MIN_TIMEOUT_MS, le=MAX_TIMEOUT_MS, description="Deadline in ms; can only lower the server's."),
    ] = None,
    apply_exif: Annotated[bool, Query(description="Apply the EXIF orientation before segmenting.")] = True,
) -> SegmentParams:
    names = [n for raw in (outputs or ["stats"]) for n in raw.split(",")]
    unknown = sorted({n for n in names if n not in OUTPUT_NAMES})
    if unknown:
        raise InvalidParameter(f"unknown outputs {unknown}; choose from {list(OUTPUT_NAMES)}")
    options = SegmentOptions(outputs=frozenset(names), output_size=output_size, apply_exif=apply_exif)
    return SegmentParams(options=options, timeout_ms=timeout_ms)


SegmentParamsDep = Annotated[SegmentParams, Depends(segment_params)]


@dataclass(frozen=True)
class ModelChoice:
    """Which model, version and input bucket a request goes to; unknown names are 404s that list the names
    available (``/v2`` names them in the path and the ``bucket`` parameter instead)."""

    model: str | None
    version: str | None
    bucket: str | None

    def resolve(self, runtime: Runtime) -> tuple[ServedVersion, Bucket | None]:
        served = runtime.registry.resolve(self.model, self.version)
        return served, served.named_bucket(self.bucket)


async def model_choice(  # async: no thread hop (see ..deps)
    model: Annotated[str | None, Query(max_length=128, description="Model name. Default: the first model.")] = None,
    version: Annotated[
        str | None, Query(max_length=16, description="Model version. Default: its highest ready version.")
    ] = None,
    bucket: Annotated[
        str | None,
        Query(max_length=16, description="Input bucket 'HxW', or 'auto' (closest aspect ratio). Default: auto."),
    ] = None,
) -> ModelChoice:
    return ModelChoice(model or None, version or None, bucket or None)


ModelChoiceDep = Annotated[ModelChoice, Depends(model_choice)]


def _image_body(multiple: bool) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    field = {"type": "array", "items": binary} if multiple else binary
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {"image": field}}}
    }
    for media in ("image/jpeg", "image/png", "image/webp"):
        content[media] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


def _accept_quality(accept: str, media: str) -> float:
    """q of ``media`` in an Accept header (exact type, type/*, or */*; the most specific wins)."""
    best: tuple[int, float] = (-1, 0.0)
    major = media.split("/")[0]
    for item in accept.split(","):
        kind, *params = (p.strip() for p in item.split(";"))
        specificity = {media: 2, f"{major}/*": 1, "*/*": 0}.get(kind.lower())
        if specificity is None or specificity < best[0]:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1]


def wants_png_body(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return _accept_quality(accept, PNG_MEDIA_TYPE) > _accept_quality(accept, JSON_MEDIA_TYPE)


def _result_fields(prepared: PreparedImage, rendered: RenderedImage, options: SegmentOptions) -> dict[str, Any]:
    cw, ch = prepared.box.original_size
    fields: dict[str, Any] = {
        "image": {
            "width": cw,
            "height": ch,
            "format": prepared.format,
            "orientation_applied": prepared.orientation_applied,
        },
        "output": {
            "width": rendered.output_size[0],
            "height": rendered.output_size[1],
            "size": options.output_size,
        },
        "bucket": bucket_name(prepared.bucket),
        "batch_size": rendered.batch_size,
        "timing_ms": rendered.timing_ms,
        **rendered.fields,
    }
    if rendered.png is not None:
        fields["png"] = base64.b64encode(rendered.png).decode("ascii")
    return fields


def _model_fields(served: ServedVersion) -> dict[str, Any]:
    backend = served.primary.backend
    return {
        "model": served.name,
        "model_version": served.version,
        "backend": backend.name,
        "device": backend.device,
    }


def _server_timing(timing_ms: dict[str, float]) -> str:
    return ", ".join(f"{stage};dur={ms}" for stage, ms in timing_ms.items())


@router.post(
    "/segment",
    summary="Segment one image",
    response_model=None,
    responses={
        200: {"model": SegmentResponse, "content": {PNG_MEDIA_TYPE: {}}},
        **ERROR_RESPONSES,
    },
    openapi_extra=_image_body(multiple=False),
)
async def segment(
    request: Request, lifecycle: LifecycleDep, runtime: RuntimeDep, params: SegmentParamsDep, choice: ModelChoiceDep
) -> Response:
    """Segment one image, sent as a raw ``image/jpeg|png|webp`` body or as multipart field ``image``.

    With ``Accept: image/png`` and ``png`` among the outputs, the answer is the label PNG itself. The
    ``X-Model``, ``X-Model-Version`` and ``X-Bucket`` headers say what served it."""
    served, bucket = choice.resolve(runtime)
    options = replace(params.options, bucket=bucket)

    async def read() -> SegmentJob:
        blobs = await read_images(request, max_bytes=runtime.settings.max_body_bytes, max_images=1)
        return SegmentJob(blobs, options, params.timeout_ms)

    _, [outcome] = await segment_request(request, served, lifecycle, read, fail_fast=True)
    prepared, rendered = outcome.prepared, outcome.answer
    assert isinstance(prepared, PreparedImage) and isinstance(rendered, RenderedImage)  # fail_fast raised errors
    model = _model_fields(served)
    headers = {
        "X-Model": model["model"],
        "X-Model-Version": model["model_version"],
        "X-Bucket": bucket_name(prepared.bucket),
        "Server-Timing": _server_timing(rendered.timing_ms),
    }
    if rendered.png is not None and wants_png_body(request):
        headers["X-Backend"] = model["backend"]
        headers["X-Output-Size"] = f"{rendered.output_size[0]}x{rendered.output_size[1]}"
        return Response(rendered.png, media_type=PNG_MEDIA_TYPE, headers=headers)
    if options.outputs == {"hf"}:  # the Hugging Face image-segmentation answer, as such endpoints send it
        return JSONResponse(rendered.fields["hf"], headers=headers)
    body = {"request_id": request.state.request_id, **model, **_result_fields(prepared, rendered, options)}
    return JSONResponse(body, headers=headers)


@router.post(
    "/segment:batch",
    summary="Segment several images",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_image_body(multiple=True),
)
async def segment_batch(
    request: Request,
    lifecycle: LifecycleDep,
    runtime: RuntimeDep,
    metrics: MetricsDep,
    params: SegmentParamsDep,
    choice: ModelChoiceDep,
) -> JSONResponse:
    """Segment up to ``max_images_per_request`` images sent as repeated multipart field ``image``.

    Every image counts one toward batching and gets its own result or error; the answer is 200 unless the
    request as a whole is refused (body, parameters, queue, readiness)."""
    max_images = runtime.settings.max_images_per_request
    served, bucket = choice.resolve(runtime)
    options = replace(params.options, bucket=bucket)

    async def read() -> SegmentJob:
        blobs = await read_images(request, max_bytes=runtime.settings.max_body_bytes, max_images=max_images)
        return SegmentJob(blobs, options, params.timeout_ms)

    _, outcomes = await segment_request(request, served, lifecycle, read, fail_fast=False)
    results: list[dict[str, Any]] = []
    for index, outcome in enumerate(outcomes):
        answer = outcome.answer
        if isinstance(answer, ServiceError):
            count_rejection(metrics, answer)
            error = error_body(answer, request_id=None, v2=False)["error"]
            results.append({"index": index, "status": answer.status, "error": error})
        else:
            assert isinstance(outcome.prepared, PreparedImage)
            fields = _result_fields(outcome.prepared, answer, options)
            results.append({"index": index, "status": 200, "result": fields})
    body = {"request_id": request.state.request_id, **_model_fields(served), "results": results}
    return JSONResponse(body)
