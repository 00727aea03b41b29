"""Extra source networks: more trained networks of the run's architecture for one Scoring Net to train on.

A Scoring Net trained on one network learns that network's quirks (which of its six conv1 filters matter, how
its activations are spread) as much as a criterion. Training it on several networks of the same architecture,
trained from other seeds on other training subsets, makes it rank by what they share: in
``benchmarks/scoring_net_transfer_sweep.py`` (3 seeds) four extra LeNet-5s with ``l1_prior: 1`` (conf/base's
defaults) won 20 of 27 zero-shot cells over L1, against 13 for the net trained on the run's network alone.

``extra_source_networks`` trains ``count`` such networks (seed ``seed + seed_offset + k``, the first
``train_images`` of a shuffle by that seed, ``training``); ``train_scoring_net(extra_sources=...)`` cycles its
steps through them and the run's network.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator
from torch import nn

from evoprune.core.models import build_model, parse_model_spec
from evoprune.core.models.adapter import model_spec
from evoprune.core.train import TrainConfig, train

Split = dict[str, torch.Tensor]


def _default_source_training() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=64, optimizer="adamw", learning_rate=3e-3, weight_decay=1e-4)


class ExtraSourcesConfig(BaseModel):
    """``scoring_net.training.extra_sources``: networks trained here for the Scoring Net to learn from."""

    model_config = ConfigDict(extra="forbid")

    count: NonNegativeInt = 4  # 0: the Scoring Net trains on the run's network alone
    # their spec, or a list of specs (network k builds spec k mod len); None: the run's architecture (a multi-exit
    # network's backbone). num_classes always comes from the run's network.
    model: dict[str, Any] | list[dict[str, Any]] | None = None
    train_images: PositiveInt | None = 4000  # each trains on this many images of the split (its own shuffle)
    training: TrainConfig = Field(default_factory=_default_source_training)
    seed_offset: NonNegativeInt = 100  # network k is trained with seed + seed_offset + k

    @field_validator("model")
    @classmethod
    def _specs_are_models(cls, value: dict[str, Any] | list[dict[str, Any]] | None) -> Any:
        """Each spec is checked now (a typo fails before anything trains); a list needs at least one."""
        specs = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, list) and not value:
            raise ValueError("`scoring_net.training.extra_sources.model` is an empty list; give a spec or null")
        for spec in specs:
            parse_model_spec(spec)
        return value


def dense_spec(model: nn.Module) -> dict[str, Any]:
    """The spec of ``model``'s dense architecture: a multi-exit network's backbone, else its own."""
    spec = model_spec(model)
    return spec["backbone"] if spec.get("name") == "multi_exit" else spec


def first_images(split: Split, n: int | None, seed: int) -> Split:
    """The first ``n`` samples of ``split`` in a shuffle seeded by ``seed``; all of it when ``n`` is None or larger."""
    if n is None or n >= len(split["labels"]):
        return split
    pick = torch.randperm(len(split["labels"]), generator=torch.Generator().manual_seed(seed))[:n]
    return {k: v[pick] for k, v in split.items()}


def extra_source_networks(
    model: nn.Module,
    train_split: Split,
    cfg: ExtraSourcesConfig,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[list[tuple[nn.Module, Split]], float]:
    """``cfg.count`` networks of ``cfg.model`` (default: ``model``'s dense architecture; a list: network k builds
    its spec k mod len) trained on subsets of ``train_split``, each with its training subset, and the seconds
    they took.

    Raises:
        ValueError: ``train_split`` is empty while networks are asked for.
    """
    if not cfg.count:
        return [], 0.0
    if not train_split["labels"].numel():
        raise ValueError("the training split is empty; extra source networks for the Scoring Net need images.")
    device = torch.device(device)
    dense = dense_spec(model)
    specs = cfg.model if isinstance(cfg.model, list) else [cfg.model if cfg.model is not None else dense]
    num_classes = dense["num_classes"]
    start, sources = time.perf_counter(), []
    for k in range(cfg.count):
        source_seed = seed + cfg.seed_offset + k
        subset = first_images(train_split, cfg.train_images, source_seed)
        torch.manual_seed(source_seed)
        network = build_model({**specs[k % len(specs)], "num_classes": num_classes}).to(device)
        train(network, subset, None, cfg.training, device, source_seed, f"extra source {k + 1}/{cfg.count}")
        sources.append((network.eval(), subset))
    return sources, time.perf_counter() - start
