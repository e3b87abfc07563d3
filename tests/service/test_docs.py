"""docs/service.md stays complete: every setting, error code and metric is documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from faseg.service.core import errors
from faseg.service.core.config import Settings
from faseg.service.metrics import ServiceMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "service.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str, doc: str) -> None:
    assert f"`--{name.replace('_', '-')}" in doc and f"`FASEG_{name.upper()}`" in doc


def test_every_error_code_is_documented(doc: str) -> None:
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServiceError) and cls is not errors.HTTPError
    }
    missing = sorted(code for code in codes if f"`{code}`" not in doc)
    assert not missing


def test_every_metric_is_documented(doc: str) -> None:
    metrics = ServiceMetrics()
    names = {family.name for family in metrics.registry.collect()}
    missing = sorted(name for name in names if name not in doc)
    assert not missing
