"""The model repository on disk, laid out as Triton's (docs/service.md, "Model repository")::

    DIR/
      <model>/
        config.json          optional: {"max_batch_size": 8, "instances": 1, "bucket": "auto", "num_versions": 1}
        <version>/           a positive integer; the highest ones are served (num_versions of them)
          <any name>.onnx    one exported file per input bucket: .onnx, .plan/.engine/.trt, or a
          <any name>.plan    torch checkpoint directory; each file's metadata gives its input size
          <checkpoint dir>/

This module only reads the layout (no model is loaded here); ``model_registry`` loads what it finds.
``--model FILE`` is served as a repository of one model with one version ("1") and one file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.config import ENGINE_SUFFIXES, ONNX_SUFFIXES
from .imaging.preprocess import AUTO, parse_bucket

CONFIG_NAME = "config.json"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
VERSION_NAME = re.compile(r"^[1-9][0-9]{0,8}$")
MODEL_SUFFIXES = ONNX_SUFFIXES + ENGINE_SUFFIXES
CONFIG_KEYS = ("max_batch_size", "instances", "bucket", "num_versions")
# The version of a model served with --model FILE (or an injected backend).
SINGLE_FILE_VERSION = "1"


class RepositoryError(ValueError):
    """The repository (or one model of it) is not laid out as documented."""


@dataclass(frozen=True)
class ModelConfig:
    """``DIR/<model>/config.json``; unset values fall back to the server's settings."""

    max_batch_size: int | None = None
    instances: int | None = None
    bucket: str = AUTO  # the default bucket of requests that name none: "auto" or "HxW"
    num_versions: int = 1  # Triton's version_policy latest{num_versions}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> ModelConfig:
        if not isinstance(raw, dict):
            raise RepositoryError(f"{where}: expected a JSON object")
        unknown = sorted(set(raw) - set(CONFIG_KEYS))
        if unknown:
            raise RepositoryError(f"{where}: unknown keys {unknown}; allowed: {list(CONFIG_KEYS)}")
        for key in ("max_batch_size", "instances", "num_versions"):
            value = raw.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RepositoryError(f"{where}: {key} must be a positive integer, not {value!r}")
        bucket = raw.get("bucket", AUTO)
        if not isinstance(bucket, str) or (bucket != AUTO and parse_bucket(bucket) is None):
            raise RepositoryError(f"{where}: bucket must be 'auto' or 'HxW', not {bucket!r}")
        return cls(
            max_batch_size=raw.get("max_batch_size"),
            instances=raw.get("instances"),
            bucket=bucket,
            num_versions=raw.get("num_versions", 1),
        )


@dataclass(frozen=True)
class ModelSource:
    """One model as found on disk: its config and the files of each version (a problem found while reading
    the layout is in ``error``, and the model is then not loaded)."""

    name: str
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    error: str | None = None

    def wanted_versions(self) -> list[str]:
        """The versions to serve: the ``num_versions`` highest, highest first."""
        ordered = sorted(self.versions, key=int, reverse=True)
        return ordered[: self.config.num_versions]


def model_files(version_dir: Path) -> tuple[Path, ...]:
    """The exported files of one version directory (hidden entries and other files are ignored)."""
    files = []
    for entry in sorted(version_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() or entry.suffix.lower() in MODEL_SUFFIXES:
            files.append(entry)
    return tuple(files)


def read_model(root: Path, name: str) -> ModelSource | None:
    """``root/name`` as a ``ModelSource``; None when there is no such directory."""
    model_dir = root / name
    if not model_dir.is_dir():
        return None
    config = ModelConfig()
    config_path = model_dir / CONFIG_NAME
    try:
        if config_path.is_file():
            try:
                raw = json.loads(config_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise RepositoryError(f"{config_path}: {exc}") from None
            config = ModelConfig.from_json(raw, str(config_path))
        versions: dict[str, tuple[Path, ...]] = {}
        for entry in sorted(model_dir.iterdir()):
            if entry.is_dir() and VERSION_NAME.match(entry.name):
                files = model_files(entry)
                if files:
                    versions[str(int(entry.name))] = files
    except RepositoryError as exc:
        return ModelSource(name, error=str(exc))
    if not versions:
        return ModelSource(name, config, error=f"{model_dir} has no version directory holding a model file")
    return ModelSource(name, config, versions)


def scan_repository(root: Path) -> dict[str, ModelSource]:
    """Every model directory of ``root`` (names as in ``MODEL_NAME``; others are ignored)."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    models = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and MODEL_NAME.match(entry.name):
            source = read_model(root, entry.name)
            if source is not None:
                models[entry.name] = source
    return models


def single_file_source(name: str, model: Path) -> ModelSource:
    """``--model FILE``: a repository of one model, version "1", one bucket."""
    return ModelSource(name, ModelConfig(), {SINGLE_FILE_VERSION: (model,)})
