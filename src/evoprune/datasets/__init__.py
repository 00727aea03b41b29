"""Custom Kedro datasets, only where kedro-datasets has none: torch models and tensor dicts stored
without pickle (loaded with ``torch.load(..., weights_only=True)``), a read-only dataset that reads raw
image files (IDX, CIFAR python batches) through torchvision, and nested MLflow runs (kedro-mlflow has
no dataset for them); and kedro-datasets' CSV, JSON and Matplotlib datasets with atomic local saves
(a failed save never leaves a half-written file)."""

from evoprune.datasets.atomic_datasets import AtomicCSVDataset, AtomicJSONDataset, AtomicMatplotlibDataset
from evoprune.datasets.exported_models_dataset import ExportedModelsDataset
from evoprune.datasets.latency_dataset import LatencyModelDataset, LatencyTableCacheDataset
from evoprune.datasets.members_dataset import FinetunedMembersDataset, PrunedMembersDataset
from evoprune.datasets.method_results_dataset import MethodResultsDataset
from evoprune.datasets.mlflow_child_runs_dataset import MlflowChildRunsDataset
from evoprune.datasets.raw_images_dataset import RawImagesDataset
from evoprune.datasets.scoring_net_dataset import ScoringNetDataset
from evoprune.datasets.tensor_dataset import TensorDictDataset
from evoprune.datasets.torch_model_dataset import SparseModelDataset, TorchModelDataset

__all__ = [
    "AtomicCSVDataset",
    "AtomicJSONDataset",
    "AtomicMatplotlibDataset",
    "ExportedModelsDataset",
    "FinetunedMembersDataset",
    "LatencyModelDataset",
    "LatencyTableCacheDataset",
    "MethodResultsDataset",
    "MlflowChildRunsDataset",
    "PrunedMembersDataset",
    "RawImagesDataset",
    "ScoringNetDataset",
    "SparseModelDataset",
    "TensorDictDataset",
    "TorchModelDataset",
]
