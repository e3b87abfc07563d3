"""KServe v2 / Open Inference Protocol tensors: JSON requests and Triton's binary-data extension.

Request: a JSON header ``{"id"?, "parameters"?, "inputs": [...], "outputs"?: [...]}``, optionally followed
by raw tensor bytes; the header's length is then in ``Inference-Header-Content-Length`` and each binary
input carries ``parameters.binary_data_size``. A BYTES tensor in binary form is a sequence of elements,
each a 4-byte little-endian length and that many bytes; in JSON form each element of our ``IMAGE`` input
is a base64 string (raw image bytes are not valid JSON strings).
Response: the same layout; outputs asked for with ``binary_data`` (or the request parameter
``binary_data_output``) follow the JSON header as raw little-endian bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from .core.errors import InvalidRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
BYTES_LENGTH_PREFIX = struct.Struct("<I")
NUMPY_TO_V2 = {np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16", np.dtype(np.float32): "FP32"}


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = {}


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] = {}
    inputs: list[V2Tensor]
    outputs: list[V2RequestedOutput] | None = None


@dataclass
class ParsedRequest:
    header: V2InferRequest
    binary: dict[str, bytes]  # input name → its raw bytes, for inputs sent in binary form


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # numeric tensors
    elements: list[bytes] = field(default_factory=list)  # BYTES tensors


def parse_request(body: bytes, header_length: str | None) -> ParsedRequest:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} {header_length!r} does not fit a body of {len(body)} bytes")
        split = int(header_length)
    else:
        split = len(body)
    try:
        header = V2InferRequest.model_validate_json(body[:split])
    except ValidationError as exc:
        raise InvalidRequest(f"invalid inference request: {exc.errors()[0].get('msg', 'bad JSON')}") from None
    binary: dict[str, bytes] = {}
    offset = split
    for tensor in header.inputs:
        size = tensor.parameters.get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise InvalidRequest(f"input {tensor.name!r}: binary_data_size {size!r} does not fit the body")
        binary[tensor.name] = body[offset : offset + size]
        offset += size
    if offset != len(body):
        raise InvalidRequest(f"{len(body) - offset} bytes after the last binary input")
    return ParsedRequest(header=header, binary=binary)


def bytes_elements(tensor: V2Tensor, raw: bytes | None) -> list[bytes]:
    """The elements of a BYTES tensor, from its binary form or its JSON (base64) form."""
    if tensor.datatype != "BYTES":
        raise InvalidRequest(f"input {tensor.name!r} must be BYTES (encoded images), not {tensor.datatype}")
    if raw is not None:
        elements, offset = [], 0
        while offset < len(raw):
            if offset + BYTES_LENGTH_PREFIX.size > len(raw):
                raise InvalidRequest(f"input {tensor.name!r}: truncated BYTES element length")
            (length,) = BYTES_LENGTH_PREFIX.unpack_from(raw, offset)
            offset += BYTES_LENGTH_PREFIX.size
            if offset + length > len(raw):
                raise InvalidRequest(f"input {tensor.name!r}: BYTES element overruns the tensor")
            elements.append(raw[offset : offset + length])
            offset += length
    else:
        if tensor.data is None:
            raise InvalidRequest(f"input {tensor.name!r} has neither data nor binary_data_size")
        elements = []
        for item in _flatten(tensor.data):
            if not isinstance(item, str):
                raise InvalidRequest(f"input {tensor.name!r}: JSON BYTES elements must be base64 strings")
            try:
                elements.append(base64.b64decode(item, validate=True))
            except (binascii.Error, ValueError):
                raise InvalidRequest(f"input {tensor.name!r}: element is not valid base64") from None
    if len(elements) != int(np.prod(tensor.shape, dtype=np.int64)):
        raise InvalidRequest(f"input {tensor.name!r}: shape {tensor.shape} but {len(elements)} elements")
    return elements


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item) if isinstance(item, list) else [item])
    return flat


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[OutputTensor],
    binary: set[str],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    described, blobs = [], []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.name in binary:
            blob = _raw_bytes(out)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.array is not None:
            entry["data"] = out.array.ravel().tolist()
        else:
            entry["data"] = [e.decode("utf-8", "replace") for e in out.elements]
        described.append(entry)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": described,
    }
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _raw_bytes(out: OutputTensor) -> bytes:
    if out.array is not None:
        return np.ascontiguousarray(out.array).astype(out.array.dtype.newbyteorder("<"), copy=False).tobytes()
    return b"".join(BYTES_LENGTH_PREFIX.pack(len(e)) + e for e in out.elements)
