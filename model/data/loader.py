"""The training loader: endless, resumable, sharded micro-batches (DESIGN §4).

:class:`InfiniteLoader` turns a :class:`TransformedDataset` into micro-batches epoch after epoch, each epoch
reshuffled by a :class:`ResumableDistributedSampler` (one shard per process, torchvision's
``sampler.set_epoch``) and re-augmented (``dataset.set_epoch``). Its ``position`` (epoch, micro-batches
consumed) goes into the training checkpoint, so a resumed run sees exactly the batches an uninterrupted run
would have seen. :func:`build_train_dataset` wraps a dataset in the augmentations of its recipe.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ModelConfig
from ..recipes import TrainConfig, data_recipe
from .batch import Batch
from .transforms import TransformedDataset, build_train_transforms

__all__ = ["InfiniteLoader", "ResumableDistributedSampler", "build_train_dataset"]


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled per epoch from ``seed + epoch``) that can start mid-epoch."""

    start_index: int = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start_index, None)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class InfiniteLoader:
    """Endless micro-batches: epoch after epoch, each reshuffled (``sampler.set_epoch``) and re-augmented
    (``dataset.set_epoch``); ``position`` = (epoch, micro-batches consumed in it) for checkpoints.

    Args:
        dataset: a :class:`TransformedDataset`.
        micro_batch: images per micro-batch of this process.
        rank / world_size: the shard of this process.
        seed: shuffling seed (shared by every process).
        start: (epoch, micro-batches already consumed in that epoch) to resume from.
    """

    def __init__(
        self,
        dataset: TransformedDataset,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        collate_fn: Callable[[list[Any]], Batch],
        start: tuple[int, int] = (0, 0),
    ):
        self.dataset = dataset
        self.micro_batch = micro_batch
        self.sampler = ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = self.sampler.num_samples // micro_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {len(dataset)} images, fewer than one micro-batch of {micro_batch} per "
                f"process × {world_size} processes; lower --batch or add images"
            )
        self.seed = seed
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.position = start

    def __iter__(self) -> Iterator[Batch]:
        epoch, consumed = self.position
        while True:
            if consumed >= self.batches_per_epoch:
                epoch, consumed = epoch + 1, 0
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)  # before the iterator exists: workers copy the dataset
            self.sampler.start_index = consumed * self.micro_batch
            loader = DataLoader(
                self.dataset,
                batch_size=self.micro_batch,
                sampler=self.sampler,
                num_workers=self.num_workers,
                collate_fn=self.collate_fn,
                drop_last=True,
                # Its own generator: creating an iterator draws a base seed, which must not consume the
                # global torch RNG (a resumed run creates its iterator at a different time).
                generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
                persistent_workers=False,
            )
            batches = iter(loader)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except (ValueError, FileNotFoundError) as exc:
                    raise _worker_error(exc) from None
                consumed += 1
                self.position = (epoch, consumed)
                yield batch
            epoch, consumed = epoch + 1, 0


def _worker_error(exc: Exception) -> Exception:
    """A data error re-raised from a DataLoader worker carries the worker's whole traceback in its message;
    keep the last line (``ValueError: mask .../b.png has label values ...``) so the user sees the file."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    message = last.split(": ", 1)[1] if last.startswith(type(exc).__name__ + ":") else last
    return type(exc)(message)


def build_train_dataset(cfg: TrainConfig, model_cfg: ModelConfig, raw: Any) -> TransformedDataset:
    """``raw`` (from ``build_dataset(cfg.data, "train")``) with the training augmentations of its kind."""
    if len(raw) == 0:
        raise ValueError(f"empty dataset: {cfg.data}")
    recipe = data_recipe(cfg.data, model_cfg.default_input_size)
    crop = tuple(cfg.crop_size or recipe.crop_size)
    transform = build_train_transforms(
        crop_size=crop,
        short_edge_choices=list(cfg.short_edge_choices or recipe.short_edge_choices),
        max_long=cfg.max_long if cfg.max_long is not None else recipe.max_long,
        pad_to="crop" if (recipe.pad_to_crop if cfg.pad_to_crop is None else cfg.pad_to_crop) else None,
        photometric=cfg.photometric,
        flip=cfg.flip,
    )
    return TransformedDataset(raw, transform, seed=cfg.seed)
