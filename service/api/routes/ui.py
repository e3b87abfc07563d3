"""``GET /`` and ``GET /ui``: the demo page; ``GET /ui/static/{name}``: its script, stylesheet and samples.

Included only when the ``ui`` setting is on (``--no-ui`` / ``FASEG_UI=false`` turns these paths into 404s).
Files are looked up by name in the listing of the package's static folder, so no request path reaches the
file system. The page is served with a Content-Security-Policy that allows nothing but this server, which
also keeps it honest about working offline.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...core.errors import HTTPError
from ...ui import INDEX_FILE, STATIC_DIR

router = APIRouter(tags=["ui"], include_in_schema=False)

STATIC_PREFIX = "/ui/static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}
# blob: for the picked photograph and the downloads, data: for the empty favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Revalidate on every load, so a new version of the page is never mixed with an old script.
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@functools.cache
def static_files(folder: Path = STATIC_DIR) -> dict[str, Path]:
    """Every servable file under ``folder`` by its relative POSIX path (only the known media types)."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


def _file(path: Path, headers: dict[str, str]) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers={**COMMON_HEADERS, **headers})


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/ui", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    """The demo page."""
    return _file(INDEX_FILE, {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer"})


@router.api_route(STATIC_PREFIX + "/{name:path}", methods=["GET", "HEAD"])
async def static(name: str) -> FileResponse:
    """One file of the page (script, stylesheet, sample photograph)."""
    path = static_files().get(name)
    if path is None:
        raise HTTPError(404, f"no file {name!r} in the demo page's static files")
    return _file(path, {})
