"""The demo page: one HTML file, one script, one stylesheet and a few sample photographs, shipped as package
data and served as they are (no build step, nothing fetched from elsewhere). The page uses only the public
``/v1`` API; ``service.api.routes.ui`` serves it at ``/`` and ``/ui`` unless the ``ui`` setting is off."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
