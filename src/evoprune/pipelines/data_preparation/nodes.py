"""Nodes of data_preparation."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt

from evoprune.core.data import make_split, split_train_validation
from evoprune.tracking import to_mlflow_metrics

Split = dict[str, torch.Tensor]


class DataPreparationParams(BaseModel):
    """conf/base/parameters_data_preparation.yml"""

    model_config = ConfigDict(extra="forbid")

    validation_size: PositiveInt = 5000  # images held out of the training set


def split_dataset(
    raw_dataset: dict[str, torch.Tensor], params: DataPreparationParams, seed: int
) -> tuple[Split, Split, Split]:
    """Seeded train/validation split of the training images; the test set as it is.

    Args:
        raw_dataset: ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.
        params: validated stage parameters.
        seed: the project seed.

    Returns:
        train, validation and test splits, each ``{"images": uint8 (N, H, W), "labels": int64 (N,)}``.
    """
    train, validation = split_train_validation(
        raw_dataset["train_images"], raw_dataset["train_labels"], params.validation_size, seed
    )
    return train, validation, make_split(raw_dataset["test_images"], raw_dataset["test_labels"])


def summarise_splits(train_split: Split, validation_split: Split, test_split: Split) -> dict[str, object]:
    """Split sizes and class counts, as MLflow metrics."""
    sizes = {
        f"{name}_size": split["labels"].numel()
        for name, split in (("train", train_split), ("validation", validation_split), ("test", test_split))
    }
    sizes["num_classes"] = int(torch.cat([train_split["labels"], test_split["labels"]]).unique().numel())
    return to_mlflow_metrics(sizes)
