"""Nodes of data_preparation."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from evoprune.core.data import adapt_images, make_split, split_train_validation
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class DataPreparationParams(BaseModel):
    """conf/base/parameters_data_preparation.yml"""

    model_config = ConfigDict(extra="forbid")

    validation_size: PositiveInt = 5000  # images held out of the training set
    image_size: PositiveInt | tuple[PositiveInt, PositiveInt] | None = None  # pixels: a side or [height, width]
    resize_mode: Literal["pad", "resize"] = "pad"  # pad: centre zero-padding; resize: antialiased bilinear
    channels: Literal[1, 3] | None = None  # 3 replicates grey images; null keeps the source's


def split_dataset(
    raw_dataset: dict[str, torch.Tensor], params: DataPreparationParams, seed: int
) -> tuple[Split, Split, Split]:
    """Images brought to ``image_size``/``channels``; a seeded train/validation split of the training
    images; the test set as it is.

    Args:
        raw_dataset: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.
        params: validated stage parameters.
        seed: the project seed.

    Returns:
        train, validation and test splits, each ``{"images": uint8 (N, H, W) or (N, C, H, W),
        "labels": int64 (N,)}``.
    """
    train_images, test_images = (
        adapt_images(raw_dataset[f"{split}_images"], params.image_size, params.resize_mode, params.channels)
        for split in ("train", "test")
    )
    train, validation = split_train_validation(train_images, raw_dataset["train_labels"], params.validation_size, seed)
    return train, validation, make_split(test_images, raw_dataset["test_labels"])


def summarise_splits(train_split: Split, validation_split: Split, test_split: Split) -> dict[str, object]:
    """Split sizes, class counts and the image shape (channels, height, width), as MLflow metrics."""
    sizes = {
        f"{name}_size": split["labels"].numel()
        for name, split in (("train", train_split), ("validation", validation_split), ("test", test_split))
    }
    sizes["num_classes"] = int(torch.cat([train_split["labels"], test_split["labels"]]).unique().numel())
    images = train_split["images"]
    channels = images.shape[1] if images.dim() == 4 else 1
    sizes |= {"image_channels": channels, "image_height": images.shape[-2], "image_width": images.shape[-1]}
    return to_mlflow_metrics(sizes)
