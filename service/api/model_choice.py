"""Which model, version and input bucket a request goes to: ``?model=&version=&bucket=`` on ``/v1``, the
path and the ``bucket`` parameter on ``/v2``. Unknown names are 404s that list the names available."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from ..buckets import AUTO, Bucket, bucket_name, parse_bucket
from ..core.errors import BucketNotFound
from ..model_version import ServedVersion
from ..runtime import Runtime


@dataclass(frozen=True)
class ModelChoice:
    model: str | None
    version: str | None
    bucket: str | None


async def model_choice(  # async: no thread hop (see ..deps)
    model: Annotated[str | None, Query(max_length=128, description="Model name. Default: the first model.")] = None,
    version: Annotated[
        str | None, Query(max_length=16, description="Model version. Default: its highest ready version.")
    ] = None,
    bucket: Annotated[
        str | None,
        Query(max_length=16, description="Input bucket 'HxW', or 'auto' (closest aspect ratio). Default: auto."),
    ] = None,
) -> ModelChoice:
    return ModelChoice(model or None, version or None, bucket or None)


ModelChoiceDep = Annotated[ModelChoice, Depends(model_choice)]


def choose_bucket_of(served: ServedVersion, requested: str | None) -> Bucket | None:
    """The bucket a request names (None: each image its own, by the policy); 404 for one the version lacks."""
    text = requested or served.config.bucket
    if text == AUTO:
        return None
    bucket = parse_bucket(text)
    if bucket is None or bucket not in served.runners:
        names = [bucket_name(b) for b in served.buckets]
        raise BucketNotFound(
            f"model {served.name!r} version {served.version} has no bucket {text!r}; buckets: {names} or 'auto'"
        )
    return bucket


def resolve_choice(runtime: Runtime, choice: ModelChoice) -> tuple[ServedVersion, Bucket | None]:
    served = runtime.resolve(choice.model, choice.version)
    return served, choose_bucket_of(served, choice.bucket)
