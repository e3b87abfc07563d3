"""The errors the service answers with: one class per documented (HTTP status, code) pair.

Every stage raises these; the API layer turns them into ``{"error": {"code", "message"}}`` (native routes)
or ``{"error": "<message>"}`` (KServe v2 routes). ``reason`` is the label of ``faseg_rejections_total``.
"""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    status: int = 500
    code: str = "INTERNAL"

    def __init__(self, message: str, *, retry_after_s: int | None = None, close_connection: bool = False):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        # Set when the request body was not read to the end: the connection cannot carry another request.
        self.close_connection = close_connection

    @property
    def reason(self) -> str:
        return self.code.lower()

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if self.close_connection:
            headers["Connection"] = "close"
        return headers


class InvalidImage(ServiceError):
    status, code = 400, "INVALID_IMAGE"


class EmptyBody(ServiceError):
    status, code = 400, "EMPTY_BODY"


class InvalidRequest(ServiceError):
    """Malformed multipart or KServe v2 request bodies."""

    status, code = 400, "INVALID_REQUEST"


class ModelNotFound(ServiceError):
    status, code = 404, "MODEL_NOT_FOUND"


class BucketNotFound(ServiceError):
    status, code = 404, "BUCKET_NOT_FOUND"


class PayloadTooLarge(ServiceError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class ImageTooLarge(ServiceError):
    status, code = 413, "IMAGE_TOO_LARGE"


class TooManyImages(ServiceError):
    status, code = 413, "TOO_MANY_IMAGES"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"


class InvalidParameter(ServiceError):
    status, code = 422, "VALIDATION_ERROR"


class ClientDisconnected(ServiceError):
    """The client closed the connection before its answer was ready (logged as 499, never sent)."""

    status, code = 499, "CLIENT_DISCONNECTED"


class QueueFull(ServiceError):
    status, code = 429, "QUEUE_FULL"


class NotReady(ServiceError):
    status, code = 503, "NOT_READY"


class Draining(ServiceError):
    status, code = 503, "DRAINING"


class OutOfMemory(ServiceError):
    """The device ran out of memory even for a batch of one image."""

    status, code = 503, "OUT_OF_MEMORY"


class DeadlineExceeded(ServiceError):
    status, code = 504, "DEADLINE_EXCEEDED"


class InternalError(ServiceError):
    status, code = 500, "INTERNAL"


class HTTPError(ServiceError):
    """Errors raised by the framework itself (404 unknown path, 405 wrong method, ...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        try:
            self.code = HTTPStatus(status).name
        except ValueError:
            self.code = "HTTP_ERROR"
