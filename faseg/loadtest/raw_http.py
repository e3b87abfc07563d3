"""A lean HTTP/1.1 client over asyncio streams, for traffic no HTTP library sends: hostile heads (a declared
10 GB body), requests abandoned mid-flight, one keep-alive connection per simulated client."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol


class Endpoint(Protocol):
    """Where requests go (the soak's config is one)."""

    host: str
    port: int
    api_key: str | None


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, config: Endpoint) -> None:
        self.config = config
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, head: bytes, body: bytes) -> Answer:
        """Send and read the answer. A kept-alive connection the server has closed meanwhile (its keep-alive
        timeout) fails before any answer: that request is sent again once on a new connection, as HTTP
        clients do."""
        reused = self.writer is not None
        try:
            return await self._exchange(head, body)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
            if not reused or partial:
                raise
        return await self._exchange(head, body)

    async def _exchange(self, head: bytes, body: bytes) -> Answer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.config.host, self.config.port)
        assert self.reader is not None
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            answer = await read_answer(self.reader)
        except BaseException:
            await self.close()
            raise
        if answer.headers.get("connection", "").lower() == "close":
            await self.close()
        return answer


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Answer(status, headers, body)


def request_head(config: Endpoint, method: str, path: str, content_type: str | None, length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {config.host}:{config.port}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if config.api_key:
        lines.append(f"X-API-Key: {config.api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
