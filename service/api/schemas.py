"""Response models: they document the answers in the OpenAPI schema (routes return pre-built JSON)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. INVALID_IMAGE, QUEUE_FULL.")
    message: str
    retry_after_s: int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


class V2ErrorResponse(BaseModel):
    error: str


class ClassStatsOut(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float
    bbox: list[int] = Field(description="[x, y, width, height] in pixels of the label map.")


class ClassRLEOut(BaseModel):
    id: int
    name: str
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="pycocotools compressed RLE (column-major runs).")


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str
    orientation_applied: bool


class OutputInfo(BaseModel):
    width: int
    height: int
    size: Literal["original", "model"]


class HFSegmentOut(BaseModel):
    label: str
    score: float | None = Field(description="null: semantic segmentation has no per-mask score.")
    mask: str = Field(description="Base64 PNG, mode L, 255 where the class is.")


class SegmentResult(BaseModel):
    image: ImageInfo
    output: OutputInfo
    bucket: str = Field(description='The input bucket "HxW" the image was letterboxed into.')
    batch_size: int = Field(description="Images in the model run that produced this answer.")
    timing_ms: dict[str, float] = Field(description="decode, queue, infer, postprocess, encode, total.")
    stats: list[ClassStatsOut] | None = None
    rle: list[ClassRLEOut] | None = None
    png: str | None = Field(None, description="Base64 PNG label map (palette mode, or 16-bit past 256 classes).")
    overlay: str | None = Field(None, description="Base64 JPEG of the class colours over the image.")
    hf: list[HFSegmentOut] | None = Field(
        None,
        description="Hugging Face image-segmentation entries; with outputs=hf alone the answer is this list itself.",
    )


class SegmentResponse(SegmentResult):
    request_id: str
    model: str
    model_version: str
    backend: str
    device: str


class BatchItem(BaseModel):
    index: int
    status: int
    result: SegmentResult | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    backend: str
    device: str
    results: list[BatchItem]


class ClassInfo(BaseModel):
    id: int
    name: str
    color: list[int]


class ModelDescription(BaseModel):
    name: str
    version: str
    ready: bool
    backend: str
    device: str
    precision: str
    input_size: list[int]
    buckets: list[list[int]] = Field(description="Input buckets [height, width], smallest first.")
    bucket_names: list[str] = Field(description='The same buckets as "HxW" strings.')
    default_bucket: str = Field("auto", description="Bucket of requests that name none.")
    state: str = Field(description="READY, LOADING or UNLOADING (Triton's repository states).")
    ready_since: float | None = Field(None, description="Unix time at which this version turned ready.")
    max_batch_size: int
    classes: list[ClassInfo]
    preset: str | None = None
    flavour: str | None = None
    format_version: str | None = None
    backend_details: dict[str, Any]
    settings: dict[str, Any] = Field(description="The effective service settings.")


class ModelList(BaseModel):
    models: list[ModelDescription]


class Status(BaseModel):
    status: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Undecodable image or malformed body",
        413: "Too many bytes, pixels or images",
        415: "Image format or content type not accepted",
        422: "Bad parameters",
        429: "Queue full (see Retry-After)",
        503: "Not ready, draining or out of device memory",
        504: "Deadline exceeded",
    }.items()
}
