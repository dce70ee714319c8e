"""Datasets, image sources, splits and the dataset registry."""

from mlrkit.data.base import (
    DATASETS,
    ArrayImageSource,
    ImageList,
    ImageSource,
    MultiLabelDataset,
    PathImageSource,
    Split,
    load_dataset,
    split_train_val,
)

__all__ = [
    "DATASETS",
    "ArrayImageSource",
    "ImageSource",
    "MultiLabelDataset",
    "ImageList",
    "PathImageSource",
    "Split",
    "load_dataset",
    "split_train_val",
]
