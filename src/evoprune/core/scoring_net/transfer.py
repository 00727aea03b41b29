"""Transfer of a trained Scoring Net, unchanged, to another model or dataset, against L1 at equal FLOPs.

``criteria_comparison`` computes the new model's unit features on its own data, lets each Scoring Net and
Torch-Pruning's group L1 pick a mask at every budget (the same budget fitting), and scores the masks right after
pruning (hard masks, adaptive BN on a copy: no training), so the rankings alone are compared; and, with a
``TransferFinetune``, also after every mask is physically pruned and fine-tuned with one recipe on the target's
training images (what a user of the transferred net deploys).

``transfer_to_target`` runs one ``TransferTarget`` end to end: the target's data (Fashion-MNIST, a class subset
of it, or the digits below), a dense model trained on it, then the masks of
  ``scoring_net_zero_shot``  the source Scoring Net unchanged,
  ``scoring_net_adapted``    that net after ``adaptation_steps`` steps of its first stage on the target,
  ``scoring_net_native``     a net trained on the target with the full stages (what transfer is measured against),
  ``l1``                     group L1.
With ``source_classes`` the source net is not the run's: a model of the same spec is trained on those classes
and a Scoring Net on it, with ``extra_sources`` more such models trained on other subsets of those classes (the
task split: trained on classes 0-4, applied to a model of classes 5-9). The adapted and native nets train on the
target's model alone.

``digits_split`` is the second dataset: scikit-learn's bundled handwritten digits (1,797 8x8 images, 16 grey
levels, shipped inside the package, no download), upsampled to 28x28 uint8 like Fashion-MNIST.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator, model_validator
from torch import nn

from evoprune.core.baselines import mask_within_budget
from evoprune.core.data import images_to_float
from evoprune.core.finetune_pool import FinetuneInputs, FinetuneJob, ParallelParams, finetune_jobs
from evoprune.core.importance import GroupL1
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.scoring_net.features import split_features
from evoprune.core.scoring_net.gates import check_budget, hard_mask_accuracy
from evoprune.core.scoring_net.model import ScoringNet, mask_at_budget
from evoprune.core.scoring_net.sources import extra_source_networks, first_images
from evoprune.core.scoring_net.training import ScoringNetConfig, train_scoring_net
from evoprune.core.train import TrainConfig, accuracy_per_exit, evaluate, train
from evoprune.core.units import ChromosomeLayout, build_layout

Split = dict[str, torch.Tensor]


def digits_split(size: int = 28, test_share: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's handwritten digits as (train, test) splits of uint8 (N, size, size) images and int64
    labels, upsampled bilinearly from 8x8 (grey levels 0..16 scaled to 0..255); a seeded stratified-free split."""
    from sklearn.datasets import load_digits

    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)[:, 0]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(labels)))
    cut = int(round(len(labels) * (1.0 - test_share)))
    train, test = order[:cut], order[cut:]
    return {"images": images[train], "labels": labels[train]}, {"images": images[test], "labels": labels[test]}


@dataclass(frozen=True)
class TransferFinetune:
    """How ``criteria_comparison`` fine-tunes every mask: ``cfg`` on ``train_split`` (the physically pruned network,
    the seed of the comparison), ``parallel`` fine-tunes at once (``finetune.parallel``)."""

    cfg: TrainConfig
    train_split: Split
    parallel: ParallelParams


def criteria_comparison(
    nets: dict[str, ScoringNet],
    model: nn.Module,
    calibration_split: Split,
    test_split: Split,
    budgets: Sequence[float],
    seed: int,
    feature_images: int = 256,
    max_pruning_ratio: float = 1.0,
    finetune: TransferFinetune | None = None,
) -> list[dict[str, float]]:
    """Per budget: each Scoring Net's mask (methods = the keys of ``nets``) and group L1's (method ``l1``) on
    ``model``, and their test accuracy without any training (adaptive BN on ``calibration_split`` images when the
    model has BatchNorm); with ``finetune``, also after each mask is pruned and fine-tuned.

    Returns:
        Rows with budget, method, flops_ratio (analytic, of the mask), units_kept, test_accuracy (and
        finetuned_accuracy with ``finetune``).
    """
    budgets = [check_budget(b) for b in budgets]
    layout = build_layout(model, input_shape(model))
    if not layout.groups:
        raise ValueError(f"{type(model).__name__} has no prunable unit; nothing to transfer a Scoring Net to.")
    device = next(model.parameters()).device
    features = split_features(model, layout, calibration_split, feature_images, seed)
    l1_scores = GroupL1(input_shape(model))(model, layout)
    images = images_to_float(test_split["images"].to(device))
    labels = test_split["labels"].to(device)
    calibration = [images_to_float(calibration_split["images"][:512].to(device))]
    rows, masks = [], []
    for budget in budgets:
        chosen = {name: mask_at_budget(net, features, layout, budget, max_pruning_ratio) for name, net in nets.items()}
        chosen["l1"] = mask_within_budget(layout, l1_scores, budget, max_pruning_ratio)
        for method, mask in chosen.items():
            masks.append(mask)
            rows.append(
                {
                    "budget": budget,
                    "method": method,
                    "flops_ratio": float(layout.flops_ratio(mask[None])[0]),
                    "units_kept": int(mask.sum()),
                    "test_accuracy": hard_mask_accuracy(model, layout, mask, images, labels, calibration),
                }
            )
    if finetune is not None:
        tuned = _finetuned_accuracies(model, layout, masks, test_split, finetune, seed)
        for row, accuracy in zip(rows, tuned, strict=True):
            row["finetuned_accuracy"] = accuracy
    return rows


def _finetuned_accuracies(
    model: nn.Module,
    layout: ChromosomeLayout,
    masks: list[np.ndarray],
    test_split: Split,
    finetune: TransferFinetune,
    seed: int,
) -> list[float]:
    """Final-exit test accuracy of each mask of ``model`` after pruning and fine-tuning (all at once, in order)."""
    device = next(model.parameters()).device
    inputs = FinetuneInputs(model, None, layout, finetune.train_split, None, finetune.cfg, None, device)
    jobs = [FinetuneJob(mask, None, seed, f"transfer fine-tune {k + 1}/{len(masks)}") for k, mask in enumerate(masks)]
    tuned = finetune_jobs(inputs, jobs, finetune.parallel)
    return [evaluate(net, test_split, device) for net, _ in tuned]


def _default_target_training() -> TrainConfig:
    return TrainConfig(epochs=3, batch_size=64, optimizer="adamw", learning_rate=3e-3, weight_decay=1e-4)


class TransferTarget(BaseModel):
    """One model + dataset a trained Scoring Net is applied to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")  # names its rows and metrics
    dataset: Literal["fashion_mnist", "digits"] = "fashion_mnist"  # fashion_mnist: the run's own splits
    classes: list[int] | None = None  # keep only these classes, relabelled 0..n-1 (a task split)
    source_classes: list[int] | None = None  # train the source net on a model of these classes, not the run's net
    model: dict[str, Any] = Field(default_factory=lambda: {"name": "lenet5"})  # num_classes is set from the data
    train_images: PositiveInt | None = None  # the first N (seeded, shuffled) training images; None: all
    training: TrainConfig = Field(default_factory=_default_target_training)  # the dense target (and source) model

    @field_validator("classes", "source_classes")
    @classmethod
    def _classes_are_distinct_labels(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value) or min(value) < 0 or max(value) > 9):
            raise ValueError(f"classes must be at least 2 distinct labels in 0..9, got {value}")
        return value

    @model_validator(mode="after")
    def _source_classes_fit_the_target(self) -> TransferTarget:
        if self.source_classes is not None and self.dataset != "fashion_mnist":
            raise ValueError(f"target {self.name!r}: source_classes needs dataset fashion_mnist (the run's splits)")
        if self.source_classes is not None and len(self.source_classes) != len(self.classes or range(10)):
            raise ValueError(
                f"target {self.name!r}: source_classes {self.source_classes} and classes {self.classes} must have "
                "the same number of classes (both models share the spec)"
            )
        if "num_classes" in self.model:
            raise ValueError(f"target {self.name!r}: leave num_classes out of `model`; the target's data sets it")
        return self


def default_targets() -> list[TransferTarget]:
    """Another dataset (the digits, LeNet-5), another model (the VGG-style net on 12k Fashion-MNIST images) and
    another task (LeNet-5 on classes 5-9, the net trained on a LeNet-5 of classes 0-4)."""
    vgg = {"name": "vgg", "stages": [[32], [64], [128]], "fc_features": [256]}
    return [
        TransferTarget(
            name="digits_lenet5",
            dataset="digits",
            training=_default_target_training().model_copy(update={"epochs": 30}),
        ),
        TransferTarget(
            name="fashion_mnist_vgg",
            model=vgg,
            train_images=12000,
            training=_default_target_training().model_copy(update={"epochs": 2}),
        ),
        TransferTarget(name="classes_5_9", classes=[5, 6, 7, 8, 9], source_classes=[0, 1, 2, 3, 4], train_images=12000),
    ]


class TransferConfig(BaseModel):
    """``scoring_net.transfer``: the targets and how they are compared."""

    model_config = ConfigDict(extra="forbid")

    budgets: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])  # FLOPs ratios
    adaptation_steps: NonNegativeInt = 50  # steps of the first stage on the target (0: no adapted rows)
    native_reference: bool = True  # also train a Scoring Net on the target itself (full stages)
    test_images: PositiveInt | None = None  # score masks on the first N test images; None: all
    targets: list[TransferTarget] = Field(default_factory=lambda: default_targets())
    # also fine-tune every mask (physically pruned, this recipe, on the target's training images) and report its
    # test accuracy and margin over L1 after it; null: the comparison without fine-tuning only
    finetune: TrainConfig | None = None

    @field_validator("budgets")
    @classmethod
    def _budgets_in_range(cls, value: list[float]) -> list[float]:
        return [check_budget(b, "scoring_net.transfer.budgets") for b in value]


def class_subset(split: Split, classes: Sequence[int]) -> Split:
    """The samples of ``split`` whose label is in ``classes``, relabelled to their position in ``classes``."""
    wanted = torch.as_tensor(list(classes), dtype=split["labels"].dtype)
    keep = torch.isin(split["labels"], wanted)
    if not bool(keep.any()):
        raise ValueError(
            f"no sample of classes {list(classes)} in the split (labels {split['labels'].unique().tolist()})"
        )
    relabelled = (split["labels"][keep, None] == wanted).int().argmax(1)
    return {"images": split["images"][keep], "labels": relabelled}


def _target_splits(target: TransferTarget, fashion: tuple[Split, Split], seed: int) -> tuple[Split, Split]:
    """(train, test) of the target: the digits, or Fashion-MNIST (the run's splits), cut to ``classes``."""
    train_split, test_split = digits_split(seed=seed) if target.dataset == "digits" else fashion
    if target.classes is not None:
        train_split, test_split = class_subset(train_split, target.classes), class_subset(test_split, target.classes)
    return first_images(train_split, target.train_images, seed), test_split


def _trained_model(target: TransferTarget, split: Split, num_classes: int, seed: int, device, what: str) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model({**target.model, "num_classes": num_classes}).to(device)
    train(model, split, None, target.training, device, seed, f"{target.name}: train {what}")
    return model.eval()


def transfer_to_target(
    net: ScoringNet,
    scoring_config: ScoringNetConfig,
    target: TransferTarget,
    fashion: tuple[Split, Split],
    cfg: TransferConfig,
    seed: int,
    device: torch.device | str = "cpu",
    parallel: ParallelParams | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``criteria_comparison`` on ``target`` (see the module docstring for the methods), each with the
    target's name, dataset, model name, dense test accuracy, source (``run`` or the source classes),
    ``margin_vs_l1_pt`` (test accuracy minus L1's at the same budget, in points; with ``cfg.finetune`` also
    ``finetuned_margin_vs_l1_pt``, the same after fine-tuning) and ``net_seconds``: the seconds that method's net
    took on the target (adaptation or training; 0 zero-shot).

    Args:
        net: the source Scoring Net (ignored for ``source_classes`` targets, which train their own).
        scoring_config: how Scoring Nets are trained (the adaptation runs its first stage).
        fashion: the run's Fashion-MNIST (train, test) splits.
        parallel: fine-tunes at once when ``cfg.finetune`` is set (default: ``ParallelParams()``).
    """
    device = torch.device(device)
    train_split, test_split = _target_splits(target, fashion, seed)
    num_classes = len(target.classes) if target.classes is not None else 10
    model = _trained_model(target, train_split, num_classes, seed, device, "the dense target")
    dense = accuracy_per_exit(model, test_split, device)[-1]
    source = "run"
    if target.source_classes is not None:
        source = "classes " + ",".join(map(str, target.source_classes))
        source_classes = class_subset(fashion[0], target.source_classes)
        source_split = first_images(source_classes, target.train_images, seed)
        source_model = _trained_model(target, source_split, num_classes, seed, device, "the source model")
        extras, _ = extra_source_networks(source_model, source_classes, scoring_config.extra_sources, seed, device)
        net = train_scoring_net(
            source_model, source_split, scoring_config, seed, device=device, extra_sources=extras
        ).net
    nets, seconds = {"scoring_net_zero_shot": net.to(device)}, {"scoring_net_zero_shot": 0.0, "l1": 0.0}
    if cfg.adaptation_steps:
        first = scoring_config.stages[0].model_copy(update={"steps": cfg.adaptation_steps})
        adapt = scoring_config.model_copy(update={"stages": [first]})
        start = time.perf_counter()
        nets["scoring_net_adapted"] = train_scoring_net(model, train_split, adapt, seed, device=device, initial=net).net
        seconds["scoring_net_adapted"] = time.perf_counter() - start
    if cfg.native_reference:
        start = time.perf_counter()
        nets["scoring_net_native"] = train_scoring_net(model, train_split, scoring_config, seed, device=device).net
        seconds["scoring_net_native"] = time.perf_counter() - start
    scored = first_images(test_split, cfg.test_images, seed)
    finetune = None
    if cfg.finetune is not None:
        finetune = TransferFinetune(cfg.finetune, train_split, parallel or ParallelParams())
    rows = criteria_comparison(
        nets,
        model,
        train_split,
        scored,
        cfg.budgets,
        seed,
        scoring_config.feature_images,
        scoring_config.max_pruning_ratio,
        finetune,
    )
    about = {"target": target.name, "dataset": target.dataset, "model": target.model.get("name", "?"), "source": source}
    l1 = {r["budget"]: r for r in rows if r["method"] == "l1"}
    margins = {"test_accuracy": "margin_vs_l1_pt", "finetuned_accuracy": "finetuned_margin_vs_l1_pt"}
    return [
        {
            **about,
            **r,
            **{margin: 100 * (r[acc] - l1[r["budget"]][acc]) for acc, margin in margins.items() if acc in r},
            "dense_accuracy": dense,
            "net_seconds": seconds[r["method"]],
        }
        for r in rows
    ]


def transfer_scoring_net(
    net: ScoringNet,
    scoring_config: ScoringNetConfig,
    fashion: tuple[Split, Split],
    cfg: TransferConfig,
    seed: int,
    device: torch.device | str = "cpu",
    parallel: ParallelParams | None = None,
) -> list[dict[str, Any]]:
    """``transfer_to_target`` over ``cfg.targets``, rows concatenated."""
    if not cfg.targets:
        raise ValueError(
            "scoring_net.transfer.targets is empty; add a target (see conf/base/parameters_scoring_net.yml)"
        )
    return [
        row
        for target in cfg.targets
        for row in transfer_to_target(net, scoring_config, target, fashion, cfg, seed, device, parallel)
    ]
