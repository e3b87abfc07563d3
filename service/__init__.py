"""HTTP serving: FastAPI app, settings, dynamic batcher, backends, metrics, KServe v2.

Public entry points (imported lazily, so ``import faseg.service`` stays cheap):
``Settings``, ``create_app(settings)`` and ``run(settings) -> exit code``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.config import Settings
    from .main import create_app
    from .server import run

__all__ = ["Settings", "create_app", "run"]


def __getattr__(name: str) -> Any:
    if name == "Settings":
        from .core.config import Settings

        return Settings
    if name == "create_app":
        from .main import create_app

        return create_app
    if name == "run":
        from .server import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
