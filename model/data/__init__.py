"""Datasets, augmentations and batching for semantic segmentation."""

from .datasets import (
    ADE20KDataset,
    CityscapesDataset,
    FolderDataset,
    SegmentationSample,
    SyntheticDataset,
    build_dataset,
)

__all__ = [
    "ADE20KDataset",
    "CityscapesDataset",
    "FolderDataset",
    "SegmentationSample",
    "SyntheticDataset",
    "build_dataset",
]
