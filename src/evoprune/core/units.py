"""Prunable units and the chromosome layout.

A unit is one output channel of a conv layer or one neuron of a hidden linear layer, anywhere in the
network (backbone and exit heads). Units are discovered with torch-pruning's dependency graph, so a
new architecture needs no new code: each pruning group (a root conv/linear and every layer coupled to
its output channels, such as its BatchNorm and the consumers' input channels, through flatten
included) becomes one block of bits. A chromosome is one flat boolean vector over all blocks.

The layout also knows, for every conv/linear layer, which bits control its output and input
dimensions, which gives FLOPs and parameter counts of any mask analytically (vectorised over a
population), with per-layer costs measured once by torch's FLOP counter on the dense network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class UnitGroup:
    """One block of the chromosome: the output units of a root layer."""

    name: str  # root module name, e.g. "backbone.stages.0.0"
    size: int  # number of units (channels or neurons)
    offset: int  # index of its first bit
    mask_module: str  # module whose output is multiplied by the mask (the BatchNorm after a conv, else the root)


@dataclass(frozen=True)
class LayerCost:
    """A conv/linear layer's cost as a function of the kept units (bits -1 = never pruned)."""

    name: str
    out_bits: np.ndarray  # (out_dim,) bit index of each output unit, -1 if not prunable
    in_bits: np.ndarray  # (in_dim,) bit index controlling each input feature/channel, -1 if always kept
    flops_per_pair: float  # FLOPs per (kept output, kept input) pair in one forward of one sample
    weight_per_pair: int  # weight parameters per pair (kernel area)
    has_bias: bool


@dataclass(frozen=True)
class ChromosomeLayout:
    """Bit i <-> (group, unit); cost model of every conv/linear layer."""

    groups: tuple[UnitGroup, ...]
    layers: tuple[LayerCost, ...]
    norm_bits: tuple[tuple[str, np.ndarray], ...]  # per BatchNorm layer: (name, bit of each channel)
    dense_flops: float
    dense_params: int
    exit_paths: tuple[np.ndarray, ...] = ()  # per exit: indices of `layers` a sample leaving there has run

    @property
    def num_bits(self) -> int:
        return sum(g.size for g in self.groups)

    def unit(self, bit: int) -> tuple[str, int]:
        """Bit index -> (root layer name, channel)."""
        for g in self.groups:
            if g.offset <= bit < g.offset + g.size:
                return g.name, bit - g.offset
        raise IndexError(f"bit {bit} outside a chromosome of {self.num_bits} bits")

    def bit(self, name: str, channel: int) -> int:
        """(root layer name, channel) -> bit index."""
        group = next((g for g in self.groups if g.name == name), None)
        if group is None or not 0 <= channel < group.size:
            raise KeyError(f"no unit {channel} in layer '{name}'; layers: {[g.name for g in self.groups]}")
        return group.offset + channel

    def split(self, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """(K, num_bits) masks -> {root name: (K, size)} blocks."""
        return {g.name: masks[:, g.offset : g.offset + g.size] for g in self.groups}

    def min_units(self, max_pruning_ratio: float = 1.0) -> np.ndarray:
        """Units each group must keep so that none loses more than ``max_pruning_ratio`` of its units
        (like torch-pruning's ``max_pruning_ratio``); at least one."""
        if not 0.0 < max_pruning_ratio <= 1.0:
            raise ValueError(f"max_pruning_ratio must lie in (0, 1], got {max_pruning_ratio}")
        return np.array([max(1, math.ceil((1.0 - max_pruning_ratio) * g.size - 1e-9)) for g in self.groups])

    def repair(
        self, masks: np.ndarray, importance: np.ndarray | None = None, min_units: np.ndarray | None = None
    ) -> np.ndarray:
        """Keep at least ``min_units[g]`` units per group (default one): a group below it gets back its
        most important dropped units (its first ones, without importances). Returns a repaired copy of
        (K, num_bits) masks."""
        masks = np.array(masks, dtype=bool, copy=True)
        for i, g in enumerate(self.groups):
            need = 1 if min_units is None else int(min_units[i])
            block = masks[:, g.offset : g.offset + g.size]
            short = np.flatnonzero(block.sum(axis=1) < need)
            if not len(short):
                continue
            weights = np.zeros(g.size) if importance is None else importance[g.offset : g.offset + g.size]
            order = np.argsort(-weights, kind="stable")
            for row in short:
                missing = order[~block[row, order]]
                block[row, missing[: need - int(block[row].sum())]] = True
        return masks

    def _layer_costs(self, masks: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-layer FLOPs and parameters (K, num_layers) and the padded mask (K, num_bits + 1)."""
        m = torch.as_tensor(np.asarray(masks, dtype=bool))
        padded = torch.cat([m, torch.ones(m.shape[0], 1, dtype=torch.bool)], dim=1).double()  # bit -1 -> kept
        flops, params = [], []
        for layer in self.layers:
            kept_out = padded[:, torch.as_tensor(layer.out_bits)].sum(1)
            kept_in = padded[:, torch.as_tensor(layer.in_bits)].sum(1)
            flops.append(layer.flops_per_pair * kept_out * kept_in)
            params.append(layer.weight_per_pair * kept_out * kept_in + (kept_out if layer.has_bias else 0))
        return torch.stack(flops, 1), torch.stack(params, 1), padded

    def cost(self, masks: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Analytic FLOPs and parameters of each mask of a (K, num_bits) population."""
        flops, params, padded = self._layer_costs(masks)
        params = params.sum(1)
        for _, bits in self.norm_bits:
            params += 2 * padded[:, torch.as_tensor(bits)].sum(1)
        return {"flops": flops.sum(1).numpy(), "params": params.numpy()}

    def exit_flops(self, masks: np.ndarray | torch.Tensor) -> np.ndarray:
        """(K, num_exits) FLOPs a sample pays when it leaves at each exit under early exiting
        (backbone prefix, its own head and the earlier heads it was evaluated by)."""
        flops = self._layer_costs(masks)[0]
        paths = self.exit_paths or (np.arange(len(self.layers)),)
        return torch.stack([flops[:, torch.as_tensor(p, dtype=torch.long)].sum(1) for p in paths], 1).numpy()


def _output_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are logits (never pruned): the last linear of every exit."""
    heads = [model.backbone.head, *model.exit_heads] if hasattr(model, "exit_heads") else [model.head]
    return [[m for m in head.modules() if isinstance(m, nn.Linear)][-1] for head in heads]


def sum_of_exit_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward function for torch-pruning's dependency graph: one scalar over every exit's logits."""
    out = model(x)
    return sum(o.sum() for o in out) if isinstance(out, (list, tuple)) else out.sum()


def build_layout(model: nn.Module, input_shape: tuple[int, ...]) -> ChromosomeLayout:
    """Discover the prunable units of ``model`` (a StagedNet or MultiExitNet) and their costs.

    Args:
        model: the network; not modified.
        input_shape: one sample's shape (C, H, W).
    """
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example, forward_fn=sum_of_exit_outputs, verbose=False
    )
    names = {m: n for n, m in model.named_modules()}
    compute = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out_bits = {m: np.full(_dims(m)[0], -1) for m in compute}
    in_bits = {m: np.full(_dims(m)[1], -1) for m in compute}
    norms: dict[nn.Module, np.ndarray] = {}
    groups: list[UnitGroup] = []
    offset = 0
    raw_groups = list(
        graph.get_all_groups(ignored_layers=_output_layers(model), root_module_types=(nn.Conv2d, nn.Linear))
    )
    order = {m: i for i, m in enumerate(model.modules())}
    raw_groups.sort(key=lambda g: order[g[0].dep.target.module])  # network order
    for group in raw_groups:
        root = group[0].dep.target.module
        size = _dims(root)[0]
        mask_module = root
        for item in group:
            target, handler = item.dep.target.module, item.dep.handler
            bits = offset + np.asarray(item.root_idxs, dtype=np.int64)
            idxs = np.asarray(item.idxs, dtype=np.int64)
            if target in in_bits and handler == graph.get_pruner_of_module(target).prune_in_channels:
                in_bits[target][idxs] = bits
            elif target in out_bits and target is root:
                out_bits[target][idxs] = bits
            elif isinstance(target, (nn.BatchNorm1d, nn.BatchNorm2d)):
                norms.setdefault(target, np.full(target.num_features, -1))[idxs] = bits
                mask_module = target
        groups.append(UnitGroup(names[root], size, offset, names[mask_module]))
        offset += size
    flops = _flops_per_layer(model, example)
    layers = tuple(
        LayerCost(
            names[m],
            out_bits[m],
            in_bits[m],
            flops.get(m, 0.0) / (_dims(m)[0] * _dims(m)[1]),
            int(m.weight.numel() // (_dims(m)[0] * _dims(m)[1])),
            m.bias is not None,
        )
        for m in compute
    )
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m not in norms:
            norms[m] = np.full(m.num_features, -1)
    model.train(was_training)
    layout = ChromosomeLayout(tuple(groups), layers, tuple((names[m], bits) for m, bits in norms.items()), 0.0, 0)
    full = layout.cost(np.ones((1, layout.num_bits), dtype=bool))
    return ChromosomeLayout(
        layout.groups,
        layers,
        layout.norm_bits,
        float(full["flops"][0]),
        int(full["params"][0]),
        _exit_paths(model, layers),
    )


def _exit_paths(model: nn.Module, layers: tuple[LayerCost, ...]) -> tuple[np.ndarray, ...]:
    """Which layers a sample leaving at each exit has run (multi-exit networks; one path otherwise)."""
    if not hasattr(model, "exit_heads"):
        return (np.arange(len(layers)),)
    paths = []
    for e in range(model.num_exits):
        if e < model.num_exits - 1:
            prefixes = [f"backbone.stages.{i}." for i in range(model.exit_after[e])] + [
                f"exit_heads.{j}." for j in range(e + 1)
            ]
        else:
            prefixes = ["backbone.", "exit_heads."]
        paths.append(
            np.array([i for i, layer in enumerate(layers) if layer.name.startswith(tuple(prefixes))], dtype=np.int64)
        )
    return tuple(paths)


def _dims(m: nn.Module) -> tuple[int, int]:
    return (m.out_channels, m.in_channels // m.groups) if isinstance(m, nn.Conv2d) else (m.out_features, m.in_features)


@torch.no_grad()
def _flops_per_layer(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, float]:
    """FLOPs of each conv/linear layer in one forward, from torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    per_module = counter.get_flop_counts()
    names = {n: m for n, m in model.named_modules()}
    out: dict[nn.Module, float] = {}
    for key, counts in per_module.items():
        name = key.split(".", 1)[1] if "." in key else ""
        module = names.get(name)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            out[module] = float(sum(counts.values()))
    return out
