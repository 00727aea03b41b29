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

from evoprune.core.models.adapter import input_shape, logit_layers


def kept_column(group_name: str) -> str:
    """The table column of how many units a network keeps in group ``group_name``: the search's Pareto set, the
    report's rows and the member rule (twin candidates) share it."""
    return f"kept.{group_name}"


@dataclass(frozen=True)
class UnitGroup:
    """One block of the chromosome: the output units of a root layer."""

    name: str  # root module name, e.g. "backbone.stages.0.0"
    size: int  # number of units (channels or neurons)
    offset: int  # index of its first bit
    # modules whose outputs are multiplied by the mask: every coupled BatchNorm, and every coupled conv/linear
    # not followed by one (a residual group masks all the branches that add into it)
    mask_modules: tuple[str, ...]


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

    def units_kept(self, mask: np.ndarray) -> list[int]:
        """How many units ``mask`` (num_bits,) keeps in each group, in group order: its allocation."""
        mask = np.asarray(mask, dtype=bool)
        return [int(mask[g.offset : g.offset + g.size].sum()) for g in self.groups]

    def kept_columns(self, masks: np.ndarray) -> dict[str, np.ndarray]:
        """Units kept per group by every mask of ``masks`` (K, num_bits), as ``{kept_column(group): (K,) counts}``."""
        masks = np.asarray(masks, dtype=bool)
        return {kept_column(g.name): masks[:, g.offset : g.offset + g.size].sum(1) for g in self.groups}

    def mask_with_counts(self, counts: list[int], importance: np.ndarray) -> np.ndarray:
        """The mask that keeps the ``counts[g]`` most important units of every group g (ties: lower index)."""
        if len(counts) != len(self.groups):
            raise ValueError(
                f"an allocation needs {len(self.groups)} unit counts, one per group {[g.name for g in self.groups]}; "
                f"got {len(counts)}"
            )
        mask = np.zeros(self.num_bits, dtype=bool)
        for g, k in zip(self.groups, counts, strict=True):
            if not 1 <= k <= g.size:
                raise ValueError(f"{g.name} has {g.size} units: keep 1 to {g.size}, not {k}")
            mask[g.offset + self._importance_order(g, importance)[:k]] = True
        return mask

    def min_units(self, max_pruning_ratio: float = 1.0) -> np.ndarray:
        """Units each group must keep so that none loses more than ``max_pruning_ratio`` of its units
        (like torch-pruning's ``max_pruning_ratio``); at least one."""
        if not 0.0 < max_pruning_ratio <= 1.0:
            raise ValueError(f"max_pruning_ratio must lie in (0, 1], got {max_pruning_ratio}")
        return np.array([max(1, math.ceil((1.0 - max_pruning_ratio) * g.size - 1e-9)) for g in self.groups])

    def repair(
        self,
        masks: np.ndarray,
        importance: np.ndarray | None = None,
        min_units: np.ndarray | None = None,
        round_to: int = 1,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Keep at least ``min_units[g]`` units per group (default one): a group below it gets back its
        most important dropped units (its first ones, without importances). With ``round_to`` r > 1, every
        group larger than r then keeps a multiple of r units or all of them (``round_units``). Returns a
        repaired copy of (K, num_bits) masks."""
        masks = np.array(masks, dtype=bool, copy=True)
        for i, g in enumerate(self.groups):
            need = 1 if min_units is None else int(min_units[i])
            block = masks[:, g.offset : g.offset + g.size]
            short = np.flatnonzero(block.sum(axis=1) < need)
            if not len(short):
                continue
            order = self._importance_order(g, importance)
            for row in short:
                missing = order[~block[row, order]]
                block[row, missing[: need - int(block[row].sum())]] = True
        return self.round_units(masks, round_to, importance, min_units, rng) if round_to > 1 else masks

    def round_units(
        self,
        masks: np.ndarray,
        round_to: int,
        importance: np.ndarray | None = None,
        min_units: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Masks whose every group larger than ``round_to`` keeps a multiple of ``round_to`` units (at
        least ``min_units[g]``, rounded up) or the whole group, like torch-pruning's ``round_to``.

        Channel counts off a multiple of the SIMD width cost oneDNN on CPU (and cuDNN) almost as much as
        the next multiple: measured here, a 3x3 conv on 32x32 maps with 11 channels takes as long as
        with 16. A count between two multiples goes to the nearer one; with ``rng``, up with probability
        proportional to its distance from the lower one (stochastic rounding: a mutation that moves one
        unit still changes the count now and then, so the search is not stuck on its first counts). Units
        come back most important first and go least important first (first/last ones without
        importances). Returns a rounded copy of (K, num_bits) masks.
        """
        if round_to < 1:
            raise ValueError(f"round_to must be a positive number of units, got {round_to}")
        masks = np.array(masks, dtype=bool, copy=True)
        for i, g in enumerate(self.groups):
            if g.size <= round_to:
                continue
            need = 1 if min_units is None else int(min_units[i])
            floor_units = min(g.size, round_to * math.ceil(need / round_to))
            block = masks[:, g.offset : g.offset + g.size]
            kept = block.sum(axis=1)
            lower = np.maximum(kept // round_to * round_to, floor_units)
            upper = np.minimum(lower + round_to, g.size)
            span = np.maximum(upper - lower, 1)
            frac = (kept - lower) / span
            up = (rng.random(len(kept)) < frac) if rng is not None else frac >= 0.5
            target = np.where(kept <= lower, lower, np.where(up, upper, lower))
            target = np.where(kept % round_to == 0, np.maximum(kept, floor_units), target)
            order = self._importance_order(g, importance)  # most important first
            for row in np.flatnonzero(target != kept):
                on = block[row, order]
                if target[row] > kept[row]:
                    block[row, order[~on][: target[row] - kept[row]]] = True
                else:
                    block[row, order[on][::-1][: kept[row] - target[row]]] = False
        return masks

    @staticmethod
    def _importance_order(group: UnitGroup, importance: np.ndarray | None) -> np.ndarray:
        """The group's unit indices, most important first (in index order without importances)."""
        weights = np.zeros(group.size) if importance is None else importance[group.offset : group.offset + group.size]
        return np.argsort(-weights, kind="stable")

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

    def flops_ratio(self, masks: np.ndarray | torch.Tensor) -> np.ndarray:
        """Analytic FLOPs of each mask of a (K, num_bits) population as a ratio of the dense network's: (K,)."""
        return self.cost(masks)["flops"] / self.dense_flops

    def exit_flops(self, masks: np.ndarray | torch.Tensor) -> np.ndarray:
        """(K, num_exits) FLOPs a sample pays when it leaves at each exit under early exiting
        (backbone prefix, its own head and the earlier heads it was evaluated by)."""
        flops = self._layer_costs(masks)[0]
        paths = self.exit_paths or (np.arange(len(self.layers)),)
        return torch.stack([flops[:, torch.as_tensor(p, dtype=torch.long)].sum(1) for p in paths], 1).numpy()


def sum_of_exit_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward function for torch-pruning's dependency graph: one scalar over every exit's logits."""
    out = model(x)
    return sum(o.sum() for o in out) if isinstance(out, (list, tuple)) else out.sum()


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (any network; every exit's logits traced), built
    in eval mode. The one place evoprune builds it: layout, importance and physical pruning use it."""
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    try:
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example, forward_fn=sum_of_exit_outputs, verbose=False
        )
    finally:
        model.train(was_training)


def prunable_groups(model: nn.Module, graph: tp.DependencyGraph) -> list:
    """torch-pruning's pruning groups of every conv/linear output except the logit layers, in network order."""
    groups = list(graph.get_all_groups(ignored_layers=logit_layers(model), root_module_types=(nn.Conv2d, nn.Linear)))
    order = {m: i for i, m in enumerate(model.modules())}
    groups.sort(key=lambda g: order[g[0].dep.target.module])
    return groups


def build_layout(model: nn.Module, input_shape: tuple[int, ...]) -> ChromosomeLayout:
    """Discover the prunable units of ``model`` (any network the adapter serves) and their costs.

    Every layer coupled to a group's channels takes its bits: the root's output, the other convs whose
    outputs add into the same channels (residual shortcuts), depthwise convs (output = input channels),
    BatchNorms, and the consumers' input channels.

    Args:
        model: the network; not modified.
        input_shape: one sample's shape (C, H, W).
    """
    if any(isinstance(m, nn.LSTM) for m in model.modules()):  # hidden units: our own layout (core.lstm)
        from evoprune.core.lstm import lstm_layout

        return lstm_layout(model, input_shape)
    grouped = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1 and not _is_depthwise(m)
    ]
    if grouped:
        raise ValueError(
            f"grouped convolutions ({', '.join(grouped)}: groups > 1, not depthwise) are not supported: a unit of "
            "them reads only its group's inputs, which the unit layout does not model; plain and depthwise "
            "convolutions are (e.g. torchvision's resnet/mobilenet, not resnext/regnet)"
        )
    was_training = model.training
    model.eval()
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    graph = dependency_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    compute = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out_bits = {m: np.full(_dims(m)[0], -1) for m in compute}
    in_bits = {m: np.full(_dims(m)[1], -1) for m in compute}
    norms: dict[nn.Module, np.ndarray] = {}
    groups: list[UnitGroup] = []
    offset = 0
    for group in prunable_groups(model, graph):
        root = group[0].dep.target.module
        size = _dims(root)[0]
        outputs, group_norms = [], []
        for item in group:
            target, handler = item.dep.target.module, item.dep.handler
            bits = offset + np.asarray(item.root_idxs, dtype=np.int64)
            idxs = np.asarray(item.idxs, dtype=np.int64)
            if target in out_bits and (
                _is_depthwise(target) or handler == graph.get_pruner_of_module(target).prune_out_channels
            ):
                out_bits[target][idxs] = bits
                outputs.append(target)
            elif target in in_bits and handler == graph.get_pruner_of_module(target).prune_in_channels:
                in_bits[target][idxs] = bits
            elif isinstance(target, (nn.BatchNorm1d, nn.BatchNorm2d)):
                norms.setdefault(target, np.full(target.num_features, -1))[idxs] = bits
                group_norms.append(target)
        masked = group_norms + [m for m in outputs if not _feeds_norm(m, group_norms, graph)]
        groups.append(UnitGroup(names[root], size, offset, tuple(dict.fromkeys(names[m] for m in masked))))
        offset += size
    flops = flops_per_layer(model, example)
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


def _is_depthwise(m: nn.Module) -> bool:
    """A conv whose every output channel reads its own input channel (its outputs = its inputs)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _feeds_norm(layer: nn.Module, norms: list[nn.Module], graph: tp.DependencyGraph) -> bool:
    """Whether ``layer``'s output goes straight into one of ``norms`` (then masking the norm suffices)."""
    node = graph.module2node.get(layer)
    return node is not None and any(out.module in norms for out in node.outputs)


@torch.no_grad()
def _exit_paths(model: nn.Module, layers: tuple[LayerCost, ...]) -> tuple[np.ndarray, ...]:
    """Which layers a sample leaving at each exit has run (multi-exit networks; one path otherwise):
    those called by the backbone's segments up to the exit, plus the exit heads evaluated on the way."""
    if not hasattr(model, "exit_heads"):
        return (np.arange(len(layers)),)
    index = {layer.name: i for i, layer in enumerate(layers)}
    names = {m: n for n, m in model.named_modules()}
    called: list[set[int]] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, _i: called[-1].add(index[names[mod]]))
        for m in model.modules()
        if m in names and names[m] in index
    ]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape(model), device=next(model.parameters()).device)
        per_step = []
        for e, segment in enumerate(model.segments):
            called.append(set())
            x = segment(x)
            if e < len(model.exit_heads):
                model.exit_heads[e](x)
            per_step.append(called[-1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    paths, seen = [], set()
    for step in per_step:
        seen |= step
        paths.append(np.array(sorted(seen), dtype=np.int64))
    paths[-1] = np.arange(len(layers))  # the final exit: everything ran
    return tuple(paths)


def _dims(m: nn.Module) -> tuple[int, int]:
    return (m.out_channels, m.in_channels // m.groups) if isinstance(m, nn.Conv2d) else (m.out_features, m.in_features)


@torch.no_grad()
def flops_per_layer(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, float]:
    """FLOPs of each conv/linear layer in one forward, from torch's FlopCounterMode: the counter's total
    before and after each layer's call (any module structure, segments included)."""
    counter = FlopCounterMode(display=False)
    out: dict[nn.Module, float] = {}
    started: dict[nn.Module, int] = {}

    def before(module: nn.Module, _inputs) -> None:
        started[module] = counter.get_total_flops()

    def after(module: nn.Module, _inputs, _output) -> None:
        out[module] = out.get(module, 0.0) + float(counter.get_total_flops() - started[module])

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_pre_hook(before) for m in layers] + [m.register_forward_hook(after) for m in layers]
    try:
        with counter:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return out
