"""Custom Kedro datasets, only where kedro-datasets has none: torch models and tensor dicts stored
without pickle (loaded with ``torch.load(..., weights_only=True)``), and a read-only dataset that
reads raw image files (IDX, CIFAR python batches) through torchvision."""

from evoprune.datasets.exported_models_dataset import ExportedModelsDataset
from evoprune.datasets.members_dataset import FinetunedMembersDataset, PrunedMembersDataset
from evoprune.datasets.raw_images_dataset import RawImagesDataset
from evoprune.datasets.tensor_dataset import TensorDictDataset
from evoprune.datasets.torch_model_dataset import TorchModelDataset

__all__ = [
    "ExportedModelsDataset",
    "FinetunedMembersDataset",
    "PrunedMembersDataset",
    "RawImagesDataset",
    "TensorDictDataset",
    "TorchModelDataset",
]
