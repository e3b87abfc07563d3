"""The stages one image goes through, named as in LitServe and timed as in Triton:

    decode (+ letterbox, decode pool) → queue → infer (batcher, inference thread)
        → postprocess (crop / resize labels, stats) → encode (RLE, PNG, overlay; encode pool)

``Pipeline`` owns the thread pools' use and the stage metrics; HTTP concerns (bodies, headers, answer
shapes) stay in ``api``. Decode and encode never run on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from .backends.base import ModelInfo
from .batching import DynamicBatcher, ItemResult
from .core.config import Settings
from .core.errors import ClientDisconnected, DeadlineExceeded, InternalError, ServiceError
from .imaging.encode import label_png, overlay_jpeg
from .imaging.hf_segmentation import hf_segments
from .imaging.preprocess import Bucket, DecodedImage, Letterbox, choose_bucket, decode_image, fit, letterbox, restore
from .imaging.rle import class_rles
from .imaging.stats import class_stats_resized
from .kserve_stats import ModelStatistics
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("stats", "rle", "png", "overlay", "hf")  # hf: the Hugging Face image-segmentation answer
# Internal output: the label array itself (the KServe v2 LABELS tensor).
LABELS_OUTPUT = "labels"
# Outputs made from the label map at the output size (the others need only the model-resolution map).
MAP_OUTPUTS = frozenset({"rle", "png", "hf", LABELS_OUTPUT})
OutputSize = Literal["original", "model"]
MS_PER_S = 1000.0


@dataclass(frozen=True)
class SegmentOptions:
    outputs: frozenset[str] = frozenset({"stats"})
    output_size: OutputSize = "original"
    apply_exif: bool = True
    bucket: Bucket | None = None  # the input bucket every image goes to; None: each its own (imaging/preprocess.py)


@dataclass
class PreparedImage:
    """A decoded image mapped onto the model input."""

    tensor: np.ndarray  # (H, W, 3) uint8, the model input
    box: Letterbox
    bucket: Bucket  # (H, W) of the model input it was letterboxed into
    format: str
    orientation_applied: bool
    image: Image.Image | None  # kept only when an overlay is wanted
    decode_s: float


@dataclass
class RenderedImage:
    """One image's answer: JSON fields, the label PNG (when asked for) and timings."""

    fields: dict[str, Any]
    png: bytes | None
    labels: np.ndarray | None  # (h, w), when LABELS_OUTPUT was asked for
    output_size: tuple[int, int]  # (width, height) of the label outputs
    timing_ms: dict[str, float]
    batch_size: int


class Pipeline:
    """The stages for one model version: ``batchers`` holds one batcher per input bucket, and each image
    is letterboxed into the bucket the policy of ``imaging/preprocess.py`` picks (or the one its request names)."""

    def __init__(
        self,
        info: ModelInfo,
        batchers: Mapping[Bucket, DynamicBatcher],
        *,
        decode_pool: Executor,
        encode_pool: Executor,
        metrics: ServiceMetrics,
        stats: ModelStatistics,
        settings: Settings,
    ):
        self._info = info  # classes and palette, shared by every bucket of the version
        self.batchers = dict(batchers)
        self.buckets = list(self.batchers)
        self._decode_pool = decode_pool
        self._encode_pool = encode_pool
        self._metrics = metrics
        self._stats = stats  # this model version's Triton-style statistics
        self._settings = settings

    def deadline(self, started: float, timeout_ms: int | None) -> float:
        """Absolute deadline (monotonic) of a request: the server's cap, lowered by ``timeout_ms``."""
        cap = self._settings.default_timeout_ms
        return started + min(cap, timeout_ms if timeout_ms is not None else cap) / MS_PER_S

    # --- the two calls a route makes -------------------------------------------------------------------

    async def prepare_all(
        self, blobs: Sequence[bytes], options: SegmentOptions, started: float
    ) -> list[PreparedImage | ServiceError]:
        """Decode and letterbox every image (in the decode pool); a bad image becomes its own error."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self._decode_pool, self._prepare, b, options) for b in blobs),
            return_exceptions=True,
        )
        outcomes: list[PreparedImage | ServiceError] = []
        for result in results:
            if isinstance(result, PreparedImage):
                outcomes.append(result)
                continue
            outcomes.append(_as_error(result))
            self._finish(None, started)
        return outcomes

    async def segment(
        self,
        images: Sequence[PreparedImage],
        options: SegmentOptions,
        *,
        started: float,
        deadline: float,
        disconnected: asyncio.Future[Any],
    ) -> list[RenderedImage | ServiceError]:
        """Queue → infer → postprocess → encode for prepared images; one answer or error per image.
        Raises ``ClientDisconnected`` if ``disconnected`` completes before the model results are in."""
        outcomes = await self._infer(images, deadline, disconnected)
        loop = asyncio.get_running_loop()
        rendered = await asyncio.gather(
            *(
                loop.run_in_executor(self._encode_pool, self._render, image, outcome, options)
                for image, outcome in zip(images, outcomes, strict=True)
                if isinstance(outcome, ItemResult)
            ),
            return_exceptions=True,
        )
        answers: list[RenderedImage | ServiceError] = []
        rendered_iter = iter(rendered)
        for outcome in outcomes:
            answer = _as_error(outcome) if isinstance(outcome, ServiceError) else next(rendered_iter)
            if isinstance(answer, RenderedImage):
                self._finish(answer, started)
                answers.append(answer)
            else:
                self._finish(None, started)
                answers.append(_as_error(answer))
        return answers

    # --- decode -----------------------------------------------------------------------------------------

    def _prepare(self, data: bytes, options: SegmentOptions) -> PreparedImage:
        started = time.monotonic()
        # JPEG draft decoding keeps at least the size of every bucket the image may go to.
        h, w = options.bucket or (max(b[0] for b in self.buckets), max(b[1] for b in self.buckets))
        decoded: DecodedImage = decode_image(
            data,
            max_pixels=self._settings.max_image_pixels,
            apply_exif=options.apply_exif,
            draft_size=(w, h) if self._settings.jpeg_draft else None,
        )
        bucket = options.bucket or choose_bucket(decoded.size, self.buckets)
        box = fit(decoded.size, bucket)
        tensor = letterbox(decoded.image, box)
        decode_s = time.monotonic() - started
        self._metrics.stage("decode", decode_s)
        return PreparedImage(
            tensor=tensor,
            box=box,
            bucket=bucket,
            format=decoded.format,
            orientation_applied=decoded.orientation_applied,
            image=decoded.image if "overlay" in options.outputs else None,
            decode_s=decode_s,
        )

    # --- queue + infer ----------------------------------------------------------------------------------

    async def _infer(
        self, images: Sequence[PreparedImage], deadline: float, disconnected: asyncio.Future[Any]
    ) -> list[ItemResult | ServiceError]:
        """Run ``images`` through the batcher; one outcome per image. Raises ``ClientDisconnected`` when
        ``disconnected`` completes first (queued images are then withdrawn and never run)."""
        if disconnected.done():  # gone while its images were decoding: never queue them
            raise ClientDisconnected("the client disconnected before its images were queued")
        groups: dict[Bucket, list[int]] = {}
        for index, prepared in enumerate(images):
            groups.setdefault(prepared.bucket, []).append(index)
        for bucket, indices in groups.items():  # all buckets admit their images, or none is queued
            self.batchers[bucket].check_room(len(indices))
        submitted: dict[int, asyncio.Future[ItemResult]] = {}
        for bucket, indices in groups.items():
            batch = self.batchers[bucket].submit([images[i].tensor for i in indices], deadline)
            submitted.update(zip(indices, batch, strict=True))
        futures = [submitted[index] for index in range(len(images))]
        gathered = asyncio.gather(*futures, return_exceptions=True)
        timeout = max(0.0, deadline - time.monotonic())
        done, _ = await asyncio.wait({gathered, disconnected}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if gathered in done:
            return [_as_outcome(r) for r in gathered.result()]
        outcomes = [_future_outcome(f) for f in futures]
        gathered.cancel()  # cancels the futures still pending: queued images are withdrawn
        if disconnected in done:
            raise ClientDisconnected("the client disconnected before the answer was ready")
        return outcomes

    # --- postprocess + encode ---------------------------------------------------------------------------

    def _render(self, prepared: PreparedImage, result: ItemResult, options: SegmentOptions) -> RenderedImage:
        started = time.monotonic()
        box = prepared.box
        size = box.original_size if options.output_size == "original" else None
        crop = restore(result.labels, box)  # (h, w) at model resolution, letterbox padding cropped
        out_size = size or (crop.shape[1], crop.shape[0])  # (W, H) of the label outputs
        # The label map at the output size is built only for the outputs that carry it; the statistics are
        # computed exactly from the model-resolution crop (several times less work for large images).
        labels = restore(result.labels, box, size) if options.outputs & MAP_OUTPUTS else crop
        fields: dict[str, Any] = {}
        if "stats" in options.outputs:
            fields["stats"] = class_stats_resized(crop, self._info.classes, out_size)
        postprocess_s = time.monotonic() - started
        encode_started = time.monotonic()
        png = None
        if "rle" in options.outputs:
            fields["rle"] = class_rles(labels, self._info.classes)
        if "hf" in options.outputs:
            fields["hf"] = hf_segments(labels, self._info.classes)
        if "png" in options.outputs:
            png = label_png(labels, self._info.palette, compress_level=self._settings.png_compress_level)
        if "overlay" in options.outputs and prepared.image is not None:
            jpeg = overlay_jpeg(
                prepared.image,
                result.labels,
                box,
                self._info.palette,
                size=out_size,
                alpha=self._settings.overlay_alpha,
                quality=self._settings.overlay_quality,
            )
            fields["overlay"] = base64.b64encode(jpeg).decode("ascii")
        encode_s = time.monotonic() - encode_started
        self._metrics.stage("postprocess", postprocess_s)
        self._metrics.stage("encode", encode_s)
        timing = {
            "decode": prepared.decode_s,
            "queue": result.queue_s,
            "infer": result.infer_s,
            "postprocess": postprocess_s,
            "encode": encode_s,
        }
        return RenderedImage(
            fields=fields,
            png=png,
            labels=labels if LABELS_OUTPUT in options.outputs else None,
            output_size=out_size,
            timing_ms={k: round(v * MS_PER_S, 3) for k, v in timing.items()},
            batch_size=result.batch_size,
        )

    def _finish(self, rendered: RenderedImage | None, started: float) -> float:
        """Record one image's end; returns its total seconds since the request started."""
        total_s = time.monotonic() - started
        self._metrics.stage("total", total_s)
        if rendered is not None:
            t = rendered.timing_ms
            self._stats.record_image(
                ok=True,
                total_s=total_s,
                input_s=t["decode"] / MS_PER_S,
                output_s=(t["postprocess"] + t["encode"]) / MS_PER_S,
                batch_size=rendered.batch_size,
            )
            rendered.timing_ms["total"] = round(total_s * MS_PER_S, 3)
        else:
            self._stats.record_image(ok=False, total_s=total_s, input_s=0.0, output_s=0.0)
        return total_s


def _future_outcome(future: asyncio.Future[ItemResult]) -> ItemResult | ServiceError:
    if not future.done() or future.cancelled():
        return DeadlineExceeded("the request deadline passed before this image was done")
    return _as_outcome(future.exception() or future.result())


def _as_outcome(value: object) -> ItemResult | ServiceError:
    if isinstance(value, ItemResult | ServiceError):
        return value
    return _as_error(value)


def _as_error(value: object) -> ServiceError:
    """A stage's exception as the error of its image (unexpected ones are logged and become 500)."""
    if isinstance(value, ServiceError):
        return value
    if isinstance(value, BaseException) and not isinstance(value, Exception):
        raise value  # cancellation and interpreter exits are not an image's fault
    log.error("unexpected error on one image: %r", value, exc_info=value if isinstance(value, Exception) else None)
    return InternalError("internal error on this image")
