"""Benchmark and mined ReID datasets, the P x K identity sampler and the recipe's transforms."""

from reidcam.reid.data.datasets import (
    DATASETS,
    ReIDDataset,
    ReIDSample,
    canonical_dataset_name,
    load_dataset,
    load_market_layout,
)
from reidcam.reid.data.image_dataset import ImageDataset
from reidcam.reid.data.sampler import EpochStream, PKSampler
from reidcam.reid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CameraLook,
    build_test_transform,
    build_train_transform,
)

__all__ = [
    "CameraLook",
    "DATASETS",
    "EpochStream",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "PKSampler",
    "ReIDDataset",
    "ReIDSample",
    "build_test_transform",
    "build_train_transform",
    "canonical_dataset_name",
    "load_dataset",
    "load_market_layout",
]
