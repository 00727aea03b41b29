"""Per-unit gates on any network a chromosome layout covers, the FLOPs they cost, and hard-mask accuracy.

A gate multiplies a unit's activation wherever the layout masks it (the outputs of its group's
``mask_modules``: after its BatchNorm, on every branch of a residual group), exactly as ``masking.py`` and
``StructuredThresholds`` do, so a binary gate vector equals the physically pruned network and a gate in
(0, 1) is its continuous relaxation.

Soft FLOPs: ``ChromosomeLayout.cost`` counts, for every conv/linear layer,
``flops_per_pair x kept_out x kept_in`` with ``kept_out`` (``kept_in``) the number of kept bits among the
layer's ``out_bits`` (``in_bits``), bit -1 always kept. ``SoftFlops`` replaces each bit by its gate value,
so it is a differentiable polynomial in the gates that equals the analytic cost on binary gates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from evoprune.core.masking import population_masks
from evoprune.core.train import as_exit_list
from evoprune.core.units import ChromosomeLayout

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def check_budget(budget: float, key: str = "budget") -> float:
    """``budget`` as a float after checking it is a FLOPs ratio of the dense network in (0, 1]."""
    if not 0.0 < float(budget) <= 1.0:
        raise ValueError(
            f"`{key}` is a ratio of the dense network's FLOPs and must lie in (0, 1], got {budget} "
            "(e.g. 0.5 keeps half the FLOPs)."
        )
    return float(budget)


def check_gateable(layout: ChromosomeLayout) -> None:
    """Raise a clear ValueError unless every group of ``layout`` can be gated by forward hooks."""
    if not layout.groups:
        raise ValueError(
            "the model has no prunable unit (its layout has no group: no conv or hidden linear layer besides the "
            "logit layers), so there is nothing for the Scoring Net to score; use a network with hidden layers."
        )
    hookless = [g.name for g in layout.groups if not g.mask_modules]
    if hookless:
        raise ValueError(
            f"the Scoring Net gates units by forward hooks on each group's mask_modules, but groups {hookless} have "
            "none (LSTM hidden units); LSTM models are not supported by the Scoring Net, use a conv/linear model."
        )


@contextmanager
def unit_gates(model: nn.Module, layout: ChromosomeLayout, gates: torch.Tensor) -> Iterator[None]:
    """While active, every unit's activation is multiplied by its gate (differentiably).

    Args:
        model: the network (not modified; hooks are removed on exit).
        layout: its chromosome layout (every group with mask modules: ``check_gateable``).
        gates: (num_bits,) values in [0, 1]; a bool mask works too.
    """
    check_gateable(layout)
    if gates.shape != (layout.num_bits,):
        raise ValueError(f"gates have shape {tuple(gates.shape)}, the layout expects ({layout.num_bits},)")
    with population_masks(model, layout, gates[None]):  # one tile: the whole batch under these gates
        yield


class SoftFlops:
    """Differentiable FLOPs ratio of gates: ``sum_l fpp_l * kept_out_l(g) * kept_in_l(g) / dense_flops``.

    ``kept_out_l(g) = (#unprunable outputs) + sum of the gates of the layer's output bits`` (a bit counted as
    often as it occurs, e.g. a conv channel read by 25 flattened features counts 25 times), likewise inputs.
    On binary gates it equals ``layout.flops_ratio(mask)``.
    """

    def __init__(self, layout: ChromosomeLayout, device: torch.device | str = "cpu") -> None:
        n, num_layers = layout.num_bits, len(layout.layers)
        out_counts, in_counts = np.zeros((num_layers, n)), np.zeros((num_layers, n))
        fixed_out, fixed_in = np.zeros(num_layers), np.zeros(num_layers)
        for i, layer in enumerate(layout.layers):
            np.add.at(out_counts[i], layer.out_bits[layer.out_bits >= 0], 1.0)
            np.add.at(in_counts[i], layer.in_bits[layer.in_bits >= 0], 1.0)
            fixed_out[i], fixed_in[i] = (layer.out_bits < 0).sum(), (layer.in_bits < 0).sum()

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float64, device=device)

        self.out_counts, self.in_counts = tensor(out_counts), tensor(in_counts)  # (L, num_bits)
        self.fixed_out, self.fixed_in = tensor(fixed_out), tensor(fixed_in)  # (L,)
        self.flops_per_pair = tensor(np.array([layer.flops_per_pair for layer in layout.layers]))  # (L,)
        self.dense_flops = float(layout.dense_flops)

    def __call__(self, gates: torch.Tensor) -> torch.Tensor:
        """(..., num_bits) gates -> (...) FLOPs ratio (float64, differentiable)."""
        g = gates.to(self.out_counts.device, torch.float64)
        kept_out = self.fixed_out + g @ self.out_counts.T  # (..., L)
        kept_in = self.fixed_in + g @ self.in_counts.T
        return (self.flops_per_pair * kept_out * kept_in).sum(-1) / self.dense_flops


def _recalibrate_norms(model: nn.Module, calibration: list[torch.Tensor]) -> None:
    """Adaptive BN: reset every BatchNorm's running statistics and re-estimate them (cumulative average) on
    ``calibration`` batches, BatchNorms in train mode, everything else in eval mode, no gradients."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms or not calibration:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    for x in calibration:
        model(x)
    for m in norms:
        m.eval()


@torch.no_grad()
def hard_mask_accuracy(
    model: nn.Module,
    layout: ChromosomeLayout,
    mask: np.ndarray,
    images: torch.Tensor,
    labels: torch.Tensor,
    calibration: list[torch.Tensor] | None = None,
    batch_size: int = 1000,
) -> float:
    """Final-exit accuracy of ``model`` under the binary ``mask`` after adaptive BN (on a copy: ``model``'s
    BatchNorm statistics are untouched).

    Args:
        images: (N, C, H, W) float images; labels: (N,) int64.
        calibration: float batches whose statistics replace the BatchNorm running statistics (none: keep them).
    """
    net = copy.deepcopy(model).eval()
    device = next(net.parameters()).device
    gates = torch.as_tensor(np.asarray(mask, dtype=bool), device=device).float()
    correct = 0
    with unit_gates(net, layout, gates):
        _recalibrate_norms(net, [x.to(device) for x in calibration or []])
        for first in range(0, images.shape[0], batch_size):
            logits = as_exit_list(net(images[first : first + batch_size].to(device)))[-1]
            correct += int((logits.argmax(-1) == labels[first : first + batch_size].to(device)).sum())
    return correct / max(images.shape[0], 1)
