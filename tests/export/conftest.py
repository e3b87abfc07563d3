"""Export tests parametrised over flavours: a test marked ``only_flavour(name)`` runs only with that flavour.

The other combinations are deselected at collection (they do not apply), so they never show up as skips.
The flavour is read from the parametrised fixture's value: a flavour name, or a tuple holding one.
"""

from __future__ import annotations

import pytest

FLAVOURS = ("portable", "plugin")


def _flavour(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for value in callspec.params.values():
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v in FLAVOURS:
                return v
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("only_flavour")
        if marker is not None and _flavour(item) not in (None, marker.args[0]):
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
