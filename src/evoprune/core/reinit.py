"""Re-initialisation variants for a pruned sub-network (lottery-ticket line of work).

Given trained weights W and the initial weights θ0 saved by train_dense (same architecture):
    keep          W (classic fine-tuning)
    rewind        θ0 (Frankle & Carbin: the winning ticket)
    random        a fresh initialisation
    sign          fresh magnitudes with θ0's signs (Zhou et al. 2019)
    distribution  θ0's values shuffled within each tensor (same empirical distribution)
    magnitude     θ0's absolute values with random signs
The variant is applied to the full network's weights and biases; BatchNorm running statistics come
from W for ``keep`` and from θ0 otherwise. Prune physically afterwards: masked units are then removed
whatever their values were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Variant = Literal["keep", "rewind", "random", "sign", "distribution", "magnitude"]
VARIANTS: tuple[str, ...] = ("keep", "rewind", "random", "sign", "distribution", "magnitude")


def reinit_state(
    trained: dict[str, torch.Tensor],
    initial: dict[str, torch.Tensor],
    fresh: Callable[[], dict[str, torch.Tensor]],
    variant: str,
    parameter_names: set[str],
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The state dict of ``variant``.

    Args:
        trained / initial: state dicts of the trained network (W) and of its initialisation (θ0).
        fresh: returns the state dict of a freshly initialised network of the same architecture.
        variant: one of ``VARIANTS``.
        parameter_names: keys of learnable parameters (the rest are buffers).
        generator: drives shuffles and random signs.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown re-init variant '{variant}'; choose from {list(VARIANTS)}")
    if trained.keys() != initial.keys():
        raise ValueError("trained and initial weights belong to different architectures (state dict keys differ)")
    if variant == "keep":
        return {k: v.clone() for k, v in trained.items()}
    new_init = fresh() if variant in ("random", "sign") else None
    out: dict[str, torch.Tensor] = {}
    for key, theta0 in initial.items():
        if key not in parameter_names:
            out[key] = theta0.clone()  # buffers (BatchNorm statistics) as at initialisation
        elif variant == "rewind":
            out[key] = theta0.clone()
        elif variant == "random":
            out[key] = new_init[key].to(theta0.device, copy=True)
        elif variant == "sign":
            out[key] = new_init[key].to(theta0.device).abs() * _sign(theta0)  # fresh draws are on the CPU
        elif variant == "distribution":
            flat = theta0.flatten()
            order = torch.randperm(flat.numel(), generator=generator).to(flat.device)
            out[key] = flat[order].view_as(theta0).clone()
        else:  # magnitude
            draws = torch.rand(theta0.shape, generator=generator).to(theta0.device)
            signs = torch.where(draws < 0.5, -1.0, 1.0).to(theta0.dtype)
            out[key] = theta0.abs() * signs
    return out


def _sign(t: torch.Tensor) -> torch.Tensor:
    """Signs with 0 counted as +1, so that every entry gets a sign."""
    return torch.where(t < 0, -1.0, 1.0).to(t.dtype)


def reinit_model(
    trained: nn.Module, initial: nn.Module, build: Callable[[], nn.Module], variant: str, seed: int
) -> nn.Module:
    """A copy of ``trained``'s architecture carrying the weights of ``variant``.

    Args:
        trained / initial: the trained network and the same architecture at initialisation (θ0).
        build: builds an untrained network of that architecture (its init draws from torch's RNG).
        seed: drives the fresh initialisation, shuffles and random signs.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    names = {n for n, _ in trained.named_parameters()}
    state = reinit_state(
        trained.state_dict(), initial.state_dict(), lambda: build().state_dict(), variant, names, generator
    )
    model = build()
    model.load_state_dict(state)
    return model
