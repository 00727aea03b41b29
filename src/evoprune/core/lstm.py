"""LSTM hidden units as prunable units: the chromosome layout, importance, exact scoring and our own shrinker.

A hidden unit j of LSTM layer k owns four rows of that layer (one per gate i, f, g, o, PyTorch's order) in
``weight_ih``, ``weight_hh`` and both biases, its column of ``weight_hh`` (the recurrence) and one input
column of whatever reads the layer's output: the next layer's ``weight_ih``, or the consumer after the last
layer (a linear head). Removing the unit removes all of them together (Wen et al.'s intrinsic sparse
structures). Zeroing the unit's hidden state at every step is the same network: its cell state then
reaches nothing.

We do not use torch-pruning here: its LSTM pruner (1.6.1) cuts ``weight_hh`` rows with the wrong indices,
never cuts its columns and accepts one layer only (its issues #44, #276, #404). ``shrink_lstm`` below is
small and checked against the masked forward (``masked_lstm_forward``) in the tests.

One ``nn.LSTM`` has one hidden size for all its layers, so a multi-layer LSTM whose layers keep different
numbers of units becomes a ``LayerwiseLSTM``: one single-layer ``nn.LSTM`` per layer, same call signature.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from evoprune.core.units import ChromosomeLayout, LayerCost, UnitGroup, flops_per_layer

GATES = 4  # i, f, g, o


def lstm_modules(model: nn.Module) -> list[tuple[str, nn.LSTM]]:
    """The model's ``nn.LSTM`` modules (name, module), refusing kinds the layout does not cover."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.LSTM)]
    for name, m in found:
        if m.bidirectional or m.proj_size:
            raise ValueError(
                f"LSTM '{name}' is bidirectional or projected (proj_size={m.proj_size}); evoprune prunes the "
                "hidden units of unidirectional LSTMs without projection only"
            )
    return found


def has_lstm(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.LSTM, LayerwiseLSTM)) for m in model.modules())


class LayerwiseLSTM(nn.Module):
    """A stack of single-layer ``nn.LSTM``s with their own hidden sizes; ``forward`` like ``nn.LSTM``'s
    (without initial state), returning the last layer's output and per-layer (h_n, c_n) lists."""

    def __init__(self, layers: list[nn.LSTM]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.batch_first = layers[0].batch_first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]]:
        hs, cs = [], []
        for layer in self.layers:
            x, (h, c) = layer(x)
            hs.append(h)
            cs.append(c)
        return x, (hs, cs)


def _gate_rows(kept: torch.Tensor, hidden: int) -> torch.Tensor:
    """Rows of the four gate blocks that belong to the ``kept`` hidden units."""
    return torch.cat([kept + g * hidden for g in range(GATES)])


def shrink_lstm(lstm: nn.LSTM, kept: list[torch.Tensor], kept_inputs: torch.Tensor | None = None) -> nn.Module:
    """A smaller copy of ``lstm`` keeping hidden units ``kept[k]`` of layer k (and input features
    ``kept_inputs`` of layer 0, all by default): an ``nn.LSTM`` when every layer keeps as many units,
    else a ``LayerwiseLSTM``. The input module is not modified."""
    if len(kept) != lstm.num_layers:
        raise ValueError(f"kept units given for {len(kept)} layers; the LSTM has {lstm.num_layers}")
    sizes = [len(k) for k in kept]
    if min(sizes) < 1:
        raise ValueError("every LSTM layer must keep at least one hidden unit; repair the mask first")
    dev = lstm.weight_ih_l0.device
    previous = kept_inputs if kept_inputs is not None else torch.arange(lstm.input_size, device=dev)
    layers = []
    for k, units in enumerate(kept):
        units = torch.as_tensor(units, device=dev, dtype=torch.long)
        rows = _gate_rows(units, lstm.hidden_size)
        layer = nn.LSTM(len(previous), len(units), 1, bias=lstm.bias, batch_first=lstm.batch_first).to(dev)
        with torch.no_grad():
            layer.weight_ih_l0.copy_(getattr(lstm, f"weight_ih_l{k}")[rows][:, previous])
            layer.weight_hh_l0.copy_(getattr(lstm, f"weight_hh_l{k}")[rows][:, units])
            if lstm.bias:
                layer.bias_ih_l0.copy_(getattr(lstm, f"bias_ih_l{k}")[rows])
                layer.bias_hh_l0.copy_(getattr(lstm, f"bias_hh_l{k}")[rows])
        layers.append(layer)
        previous = units
    if len(set(sizes)) > 1:
        return LayerwiseLSTM(layers)
    merged = nn.LSTM(
        len(kept_inputs) if kept_inputs is not None else lstm.input_size,
        sizes[0],
        lstm.num_layers,
        bias=lstm.bias,
        batch_first=lstm.batch_first,
        dropout=lstm.dropout,
    ).to(dev)
    with torch.no_grad():
        for k, layer in enumerate(layers):
            for name, value in layer.named_parameters():
                getattr(merged, name.replace("_l0", f"_l{k}")).copy_(value)
    return merged


def unrolled_lstm_forward(
    lstm: nn.LSTM, x: torch.Tensor, on_hidden: Callable[[int, torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """``lstm``'s output sequence computed one step at a time (the input products of all steps in one matmul),
    with ``on_hidden(k, h)`` applied to every step's hidden state (B, H) of layer k before it is used anywhere
    (the next step, the next layer, the output). ``x``: (B, T, F) if ``lstm.batch_first`` else (T, B, F)."""
    seq = x if lstm.batch_first else x.transpose(0, 1)  # (B, T, F)
    hidden = lstm.hidden_size
    for k in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
        bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}") if lstm.bias else 0.0
        projected = seq @ w_ih.T + bias  # (B, T, 4H)
        h = seq.new_zeros(seq.shape[0], hidden)
        c = seq.new_zeros(seq.shape[0], hidden)
        outs = []
        for t in range(seq.shape[1]):
            i, f, g, o = (projected[:, t] + h @ w_hh.T).chunk(GATES, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if on_hidden is not None:
                h = on_hidden(k, h)
            outs.append(h)
        seq = torch.stack(outs, 1)
    return seq if lstm.batch_first else seq.transpose(0, 1)


def masked_lstm_forward(lstm: nn.LSTM, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The LSTM's output sequence (batch_first like ``lstm``) with hidden unit j of layer k zeroed at every
    step where ``masks[k][j]`` is 0: the reference the shrinker must equal (unrolled, slow)."""
    if masks is None:
        return unrolled_lstm_forward(lstm, x)
    return unrolled_lstm_forward(lstm, x, lambda k, h: h * masks[k].to(h.dtype))


def lstm_steps(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> int:
    """Time steps the LSTM ``name`` runs for one sample, read from a forward."""
    module = dict(model.named_modules())[name]
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[1 if m.batch_first else 0]))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was_training)
    return int(seen[0])


def _consumers(model: nn.Module, lstm: nn.LSTM) -> list[str]:
    """Linear layers that read the LSTM's output features (in_features == hidden_size), by name."""
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.in_features == lstm.hidden_size and not any(m is x for x in lstm.modules())
    ]


def unit_readers(model: nn.Module) -> dict[str, tuple[nn.LSTM, int, list[tuple[nn.Module, str]]]]:
    """Per layout group (``<lstm>.l{k}``): the LSTM, k, and the weights whose columns read the layer's hidden
    state, as (module, attribute): its own ``weight_hh_l{k}``, then the next layer's ``weight_ih_l{k+1}`` or the
    consumers' ``weight``. Zeroing a unit's columns in all of them is removing the unit."""
    out = {}
    for name, lstm in lstm_modules(model):
        consumers = [(model.get_submodule(c), "weight") for c in _consumers(model, lstm)]
        for k in range(lstm.num_layers):
            after = [(lstm, f"weight_ih_l{k + 1}")] if k + 1 < lstm.num_layers else consumers
            out[f"{name}.l{k}"] = (lstm, k, [(lstm, f"weight_hh_l{k}"), *after])
    return out


def lstm_layout(model: nn.Module, input_shape: tuple[int, ...]) -> ChromosomeLayout:
    """The chromosome layout of a model with LSTMs: one block of bits per LSTM layer (its hidden units);
    costs of the gate matrices analytic (2 FLOPs per multiply-add per step), of the other layers from the
    FLOP counter. Other layers' units are not prunable in such a model."""
    lstms = lstm_modules(model)
    groups: list[UnitGroup] = []
    layers: list[LayerCost] = []
    consumer_bits: dict[str, np.ndarray] = {}
    offset = 0
    for name, lstm in lstms:
        steps = lstm_steps(model, name, input_shape)
        previous = np.full(lstm.input_size, -1)
        for k in range(lstm.num_layers):
            bits = offset + np.arange(lstm.hidden_size)
            groups.append(UnitGroup(f"{name}.l{k}", lstm.hidden_size, offset, ()))
            rows = np.tile(bits, GATES)
            for matrix, inputs in (("ih", previous), ("hh", bits)):
                layers.append(LayerCost(f"{name}.weight_{matrix}_l{k}", rows, inputs, 2.0 * steps, 1, lstm.bias))
            previous, offset = bits, offset + lstm.hidden_size
        consumers = _consumers(model, lstm)
        if not consumers:
            raise ValueError(f"no linear layer reads the output of LSTM '{name}'; nothing to connect its units to")
        consumer_bits.update({c: previous for c in consumers})
    example = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    was_training = model.training
    flops = flops_per_layer(model.eval(), example)
    model.train(was_training)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            out_dim, in_dim = (
                (m.out_channels, m.in_channels // m.groups) if isinstance(m, nn.Conv2d) else m.weight.shape
            )
            in_bits = consumer_bits.get(name, np.full(in_dim, -1))
            pair = flops.get(m, 0.0) / (out_dim * in_dim)
            layers.append(
                LayerCost(name, np.full(out_dim, -1), in_bits, pair, m.weight[0].numel() // in_dim, m.bias is not None)
            )
    layout = ChromosomeLayout(tuple(groups), tuple(layers), (), 0.0, 0)
    full = layout.cost(np.ones((1, layout.num_bits), dtype=bool))
    return ChromosomeLayout(layout.groups, layout.layers, (), float(full["flops"][0]), int(full["params"][0]))


def _kept_per_layer(layout: ChromosomeLayout, mask: np.ndarray, name: str, num_layers: int) -> list[torch.Tensor]:
    by_name = {g.name: g for g in layout.groups}
    return [
        torch.as_tensor(np.flatnonzero(mask[g.offset : g.offset + g.size]))
        for g in (by_name[f"{name}.l{k}"] for k in range(num_layers))
    ]


def prune_lstm_physically(model: nn.Module, layout: ChromosomeLayout, mask: np.ndarray) -> nn.Module:
    """A genuinely smaller copy of ``model``: every LSTM without the hidden units ``mask`` drops, and the
    layers reading its output without their input columns. The input model is not modified."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (layout.num_bits,):
        raise ValueError(f"mask has shape {mask.shape}, the layout expects ({layout.num_bits},)")
    pruned = copy.deepcopy(model)
    for name, lstm in lstm_modules(pruned):
        kept = _kept_per_layer(layout, mask, name, lstm.num_layers)
        last = kept[-1].to(lstm.weight_ih_l0.device)
        for consumer in _consumers(pruned, lstm):
            linear = pruned.get_submodule(consumer)
            linear.weight = nn.Parameter(linear.weight.detach()[:, last].clone())
            linear.in_features = len(last)
        parent, _, child = name.rpartition(".")
        setattr(pruned.get_submodule(parent) if parent else pruned, child, shrink_lstm(lstm, kept))
    return pruned


def lstm_unit_l1(model: nn.Module, layout: ChromosomeLayout, coupled: bool) -> np.ndarray:
    """Per bit: L1 norm of the unit's four gate rows (``coupled``: plus its recurrent column and its
    consumers' input column, normalised by the layer's mean like Torch-Pruning's group importance)."""
    scores = np.zeros(layout.num_bits)
    for name, lstm in lstm_modules(model):
        consumers = [model.get_submodule(c) for c in _consumers(model, lstm)]
        h = lstm.hidden_size
        for k in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}").detach(), getattr(lstm, f"weight_hh_l{k}").detach()
            rows = torch.cat([w_ih, w_hh], 1).abs().sum(1).view(GATES, h).sum(0)  # (H,)
            if coupled:
                rows = rows + w_hh.abs().sum(0)
                readers = (
                    [getattr(lstm, f"weight_ih_l{k + 1}").detach()]
                    if k + 1 < lstm.num_layers
                    else [c.weight.detach() for c in consumers]
                )
                rows = rows + sum(r.abs().sum(0) for r in readers)
                rows = rows / rows.mean()
            g = next(g for g in layout.groups if g.name == f"{name}.l{k}")
            scores[g.offset : g.offset + g.size] = rows.float().cpu().numpy()
    return scores
