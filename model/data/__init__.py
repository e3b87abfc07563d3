"""Datasets, augmentations and batching for semantic segmentation."""

from .datasets import ADE20KDataset, CityscapesDataset, FolderDataset, build_dataset
from .sample import SegmentationSample
from .synthetic import SyntheticDataset

__all__ = [
    "ADE20KDataset",
    "CityscapesDataset",
    "FolderDataset",
    "SegmentationSample",
    "SyntheticDataset",
    "build_dataset",
]
