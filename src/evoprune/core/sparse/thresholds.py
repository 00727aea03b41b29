"""Trainable thresholds on any network's conv, linear and LSTM weights (dynamic sparse training).

Unstructured (the paper): every conv/linear layer gets one threshold per output unit (a conv's weights viewed
as (c_out, -1), a linear's as (out, in)); the layer computes with ``W * step(|W| - t)``, applied as a
``torch.nn.utils.parametrize`` parametrization, so any module code runs unchanged (exit heads included).
An LSTM's gate matrices ``weight_ih_l{k}`` and ``weight_hh_l{k}`` are masked the same way, one threshold per row,
i.e. per gate matrix and hidden unit as in the authors' LSTM code (their matrices are stored transposed, one per
gate, so a row here is their "hidden column"). ``nn.LSTM`` re-reads parametrized weights at every forward
(``RNNBase._update_flat_weights``), so its fused kernel runs on the masked weights.

Structured (ours): the same thresholds on each prunable unit's weight magnitude (mean |w| of its row of the
root layer, relative to the layer's average), giving one keep bit per unit of the project's chromosome layout; a dropped unit's activation is
multiplied by 0 wherever the layout masks it (after its BatchNorm, on every branch of a residual group), so the
structured model equals its physically pruned copy.

Both share the regulariser ``alpha * sum(exp(-t))`` and the reset rule: a layer keeping at most
``reset_below`` of its weights (units) has its thresholds set back to 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from evoprune.core.lstm import GATES, unit_readers
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


def sparse_weights(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The weight matrices dynamic sparse training masks: name -> (module, attribute). A conv/linear layer's
    ``weight`` is named like the layer; an LSTM's gate matrices ``<lstm>.weight_ih_l{k}`` / ``.weight_hh_l{k}``."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = (m, "weight")
        elif isinstance(m, nn.LSTM):
            for k in range(m.num_layers):
                for matrix in ("ih", "hh"):
                    out[f"{name}.weight_{matrix}_l{k}"] = (m, f"weight_{matrix}_l{k}")
    return out


def unmasked(module: nn.Module, attribute: str) -> torch.Tensor:
    """The stored tensor behind ``module.<attribute>``: its original when a parametrization masks it."""
    if parametrize.is_parametrized(module, attribute):
        return getattr(module.parametrizations, attribute).original
    return getattr(module, attribute)


class UnstructuredThresholds:
    """Thresholds on every weight of ``model``'s conv/linear layers and LSTM gate matrices (registered on
    ``model`` in place)."""

    def __init__(self, model: nn.Module) -> None:
        self.weights = sparse_weights(model)
        if not self.weights:
            raise ValueError(f"{type(model).__name__} has no conv, linear or LSTM layer: nothing for sparse training.")
        self.masks: dict[str, ThresholdMask] = {}
        for name, (module, attribute) in self.weights.items():
            weight = getattr(module, attribute)
            parametrization = ThresholdMask(weight.shape[0]).to(weight.device)
            parametrize.register_parametrization(module, attribute, parametrization)
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
        for name, (module, attribute) in self.weights.items():
            original = unmasked(module, attribute)
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
        return {
            name: self.masks[name].mask(unmasked(module, attribute)).bool().cpu()
            for name, (module, attribute) in self.weights.items()
        }

    def remove(self) -> None:
        """Bake the masked weights into plain tensors (zeros where pruned) and drop the thresholds."""
        for module, attribute in self.weights.values():
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)


class UnitColumnMask(nn.Module):
    """Parametrization ``W -> W * keep[None, :]``: the columns that read dropped LSTM hidden units are zero."""

    def __init__(self, keep: Callable[[], torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_keep", keep)  # a function of the thresholds, not a submodule

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self._keep().to(weight.dtype)[None, :]


class StructuredThresholds:
    """One threshold per prunable unit of ``layout``: unit kept while its relative magnitude (mean |w| of its
    root-layer row over the layer's average) exceeds t.

    An LSTM hidden unit's magnitude is the mean |w| of its four gate rows (``weight_ih`` and ``weight_hh``); a
    dropped unit's columns are zeroed wherever its hidden state is read (``core.lstm.unit_readers``), which is
    the physically shrunk LSTM."""

    def __init__(self, model: nn.Module, layout: ChromosomeLayout) -> None:
        self.model = model
        self.layout = layout
        modules = dict(model.named_modules())
        device = next(model.parameters()).device
        self.lstm_units = unit_readers(model)
        self.roots = {g.name: modules[g.name] for g in layout.groups if g.name not in self.lstm_units}
        self.thresholds_by_group = {g.name: nn.Parameter(torch.zeros(g.size, device=device)) for g in layout.groups}
        self._handles = []
        self._column_masks: list[tuple[nn.Module, str]] = []
        for g in layout.groups:
            for name in g.mask_modules:
                self._handles.append(modules[name].register_forward_hook(self._masking_hook(g.name)))
            for module, attribute in self.lstm_units.get(g.name, (None, 0, []))[2]:
                keep = UnitColumnMask(lambda group=g.name: self.unit_mask(group))
                parametrize.register_parametrization(module, attribute, keep)
                self._column_masks.append((module, attribute))

    def _masking_hook(self, group: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
            keep = self.unit_mask(group).to(output.dtype)
            return output * keep.view(1, -1, *([1] * (output.dim() - 2)))

        return hook

    def unit_magnitude(self, group: str) -> torch.Tensor:
        """Mean |w| of each unit's row of its root layer relative to the layer's average, (size,): thresholds are
        then on one scale for every layer (raw magnitudes differ by layer, e.g. with the fan-in at init, so one
        threshold speed would drop a layer of small weights whole)."""
        if group in self.lstm_units:
            lstm, k, _ = self.lstm_units[group]
            rows = torch.cat([unmasked(lstm, f"weight_ih_l{k}"), unmasked(lstm, f"weight_hh_l{k}")], 1)
            magnitude = rows.abs().mean(1).view(GATES, lstm.hidden_size).mean(0)
        else:
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
        return float(self.layout.flops_ratio(self.chromosome()[None])[0])

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
        """Detach the masking hooks and column masks: the model computes densely again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, attribute in self._column_masks:
            parametrize.remove_parametrizations(module, attribute, leave_parametrized=False)
        self._column_masks = []
