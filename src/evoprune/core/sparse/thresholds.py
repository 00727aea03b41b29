"""Trainable thresholds on any network's conv and linear layers (dynamic sparse training).

Unstructured (the paper): every conv/linear layer gets one threshold per output unit (a conv's weights viewed
as (c_out, -1), a linear's as (out, in)); the layer computes with ``W * step(|W| - t)``, applied as a
``torch.nn.utils.parametrize`` parametrization, so any module code runs unchanged (exit heads included).

Structured (ours): the same thresholds on each prunable unit's weight magnitude (mean |w| of its row of the
root layer, relative to the layer's average), giving one keep bit per unit of the project's chromosome layout; a dropped unit's activation is
multiplied by 0 wherever the layout masks it (after its BatchNorm, on every branch of a residual group), so the
structured model equals its physically pruned copy.

Both share the regulariser ``alpha * sum(exp(-t))`` and the reset rule: a layer keeping at most
``reset_below`` of its weights (units) has its thresholds set back to 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from evoprune.core.sparse.estimator import step
from evoprune.core.units import ChromosomeLayout


class ThresholdMask(nn.Module):
    """Parametrization ``W -> W * step(|W| - t)`` with one trainable threshold per output unit."""

    def __init__(self, out_units: int) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.zeros(out_units))

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        """The keep mask of ``weight`` (same shape; 1 = kept), differentiable by the long-tailed estimator."""
        rows = weight.reshape(weight.shape[0], -1)
        return step(rows.abs() - self.threshold[:, None]).reshape(weight.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask(weight)


def sparse_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The conv and linear layers dynamic sparse training masks, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


class UnstructuredThresholds:
    """Thresholds on every weight of ``model``'s conv/linear layers (registered on ``model`` in place)."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = sparse_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no conv or linear layer: nothing for sparse training.")
        self.masks: dict[str, ThresholdMask] = {}
        for name, layer in self.layers.items():
            parametrization = ThresholdMask(layer.weight.shape[0]).to(layer.weight.device)
            parametrize.register_parametrization(layer, "weight", parametrization)
            self.masks[name] = parametrization

    def thresholds(self) -> list[nn.Parameter]:
        return [p.threshold for p in self.masks.values()]

    def penalty(self) -> torch.Tensor:
        """``sum(exp(-t))`` over every threshold."""
        return sum(torch.exp(-t).sum() for t in self.thresholds())

    @torch.no_grad()
    def kept(self) -> dict[str, tuple[int, int]]:
        """Per layer: (weights kept, weights)."""
        out = {}
        for name, layer in self.layers.items():
            original = layer.parametrizations.weight.original
            keep = (original.reshape(original.shape[0], -1).abs() > self.masks[name].threshold[:, None]).sum()
            out[name] = (int(keep), original.numel())
        return out

    def kept_share(self) -> float:
        """Share of all masked weights that are kept."""
        counts = self.kept().values()
        return sum(k for k, _ in counts) / sum(n for _, n in counts)

    @torch.no_grad()
    def reset(self, below: float) -> list[str]:
        """Set to 0 the thresholds of every layer keeping at most ``below`` of its weights; their names."""
        reset = [name for name, (k, n) in self.kept().items() if k <= below * n]
        for name in reset:
            self.masks[name].threshold.zero_()
        return reset

    @torch.no_grad()
    def binary_masks(self) -> dict[str, torch.Tensor]:
        """Per layer: the boolean keep mask of its weight (CPU)."""
        out = {}
        for name, layer in self.layers.items():
            original = layer.parametrizations.weight.original
            out[name] = self.masks[name].mask(original).bool().cpu()
        return out

    def remove(self) -> None:
        """Bake the masked weights into plain ``weight`` tensors (zeros where pruned) and drop the thresholds."""
        for layer in self.layers.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)


class StructuredThresholds:
    """One threshold per prunable unit of ``layout``: unit kept while its relative magnitude (mean |w| of its
    root-layer row over the layer's average) exceeds t."""

    def __init__(self, model: nn.Module, layout: ChromosomeLayout) -> None:
        self.model = model
        self.layout = layout
        modules = dict(model.named_modules())
        device = next(model.parameters()).device
        self.roots = {g.name: modules[g.name] for g in layout.groups}
        self.thresholds_by_group = {g.name: nn.Parameter(torch.zeros(g.size, device=device)) for g in layout.groups}
        self._handles = []
        for g in layout.groups:
            for name in g.mask_modules:
                self._handles.append(modules[name].register_forward_hook(self._masking_hook(g.name)))

    def _masking_hook(self, group: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
            keep = self.unit_mask(group).to(output.dtype)
            return output * keep.view(1, -1, *([1] * (output.dim() - 2)))

        return hook

    def unit_magnitude(self, group: str) -> torch.Tensor:
        """Mean |w| of each unit's row of its root layer relative to the layer's average, (size,): thresholds are
        then on one scale for every layer (raw magnitudes differ by layer, e.g. with the fan-in at init, so one
        threshold speed would drop a layer of small weights whole)."""
        weight = self.roots[group].weight
        magnitude = weight.reshape(weight.shape[0], -1).abs().mean(1)
        return magnitude / magnitude.mean().detach().clamp_min(1e-12)

    def unit_mask(self, group: str) -> torch.Tensor:
        """(size,) float keep bits of a group, differentiable by the long-tailed estimator."""
        return step(self.unit_magnitude(group) - self.thresholds_by_group[group])

    def thresholds(self) -> list[nn.Parameter]:
        return list(self.thresholds_by_group.values())

    def penalty(self) -> torch.Tensor:
        return sum(torch.exp(-t).sum() for t in self.thresholds())

    @torch.no_grad()
    def chromosome(self) -> np.ndarray:
        """The keep bits of every unit in the layout's order (num_bits,), before any repair."""
        return torch.cat([self.unit_mask(g.name) for g in self.layout.groups]).bool().cpu().numpy()

    def kept_share(self) -> float:
        """FLOPs of the structured model as a share of the dense FLOPs (analytic, from the layout)."""
        return float(self.layout.cost(self.chromosome()[None])["flops"][0] / self.layout.dense_flops)

    @torch.no_grad()
    def kept(self) -> dict[str, tuple[int, int]]:
        """Per group: (units kept, units)."""
        bits = self.chromosome()
        return {g.name: (int(bits[g.offset : g.offset + g.size].sum()), g.size) for g in self.layout.groups}

    @torch.no_grad()
    def reset(self, below: float) -> list[str]:
        reset = [name for name, (k, n) in self.kept().items() if k <= below * n]
        for name in reset:
            self.thresholds_by_group[name].zero_()
        return reset

    def remove(self) -> None:
        """Detach the masking hooks: the model computes densely again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
