"""Small HTTP helpers shared by the server tests."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

import httpx


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text, 0 when absent (``labels`` as in ``{reason="x"}``)."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def scrape(url: str) -> str:
    return httpx.get(url + "/metrics", timeout=10).text


async def _post_all(url: str, bodies: Sequence[bytes], path: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, content=b) for b in bodies))


def post_concurrently(
    url: str, bodies: Sequence[bytes], path: str = "/v1/segment?outputs=stats,rle"
) -> list[httpx.Response]:
    """POST every body at once (one connection each) and return the responses in order."""
    return asyncio.run(_post_all(url, bodies, path))
