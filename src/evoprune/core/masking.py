"""Masks on a network: scoring many candidate masks, and making one mask physical.

Masking a unit multiplies its activation (after its BatchNorm, if any) by zero, which equals removing
the unit: every consumer sees a zero input there. Two exact ways to score a population:
- ``population_accuracy``: tile a batch K times, ``(K*B, ...)``, and multiply each tile's activations
  by its own mask inside forward hooks (K candidates per forward, each at the dense cost);
- ``SlicedEvaluator``: run each candidate on its own sliced weights, so it costs what it keeps, with
  the input block computed once per batch. Faster on CPU (benchmarks/mask_evaluation.py).
``TiledEvaluator`` is the first way behind the search's evaluator interface: one launch for many candidates,
what keeps a GPU busy (small per-candidate forwards leave it idle); ``mask_evaluator`` picks it on CUDA.
``prune_physically`` turns one mask into a genuinely smaller network with torch-pruning.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn

from evoprune.core.data import images_to_float
from evoprune.core.lstm import has_lstm, prune_lstm_physically
from evoprune.core.models.adapter import input_shape
from evoprune.core.train import as_exit_list
from evoprune.core.units import ChromosomeLayout, dependency_graph


@contextmanager
def population_masks(model: nn.Module, layout: ChromosomeLayout, masks: torch.Tensor) -> Iterator[None]:
    """While active, a forward on ``(K*B, ...)`` inputs (tile k = rows k*B..(k+1)*B-1) applies mask k
    of ``masks`` (K, num_bits) to tile k."""
    modules = dict(model.named_modules())
    k = masks.shape[0]
    handles = []
    for group in layout.groups:
        block = masks[:, group.offset : group.offset + group.size].to(dtype=torch.float32)  # (K, C)

        def hook(_module, _inputs, output, block=block):
            tiles = output.view(k, output.shape[0] // k, *output.shape[1:])  # (K, B, C, ...)
            scale = block.to(output.device, output.dtype).view(k, 1, -1, *([1] * (output.dim() - 2)))
            return (tiles * scale).view(output.shape)

        handles += [modules[name].register_forward_hook(hook) for name in group.mask_modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def population_accuracy(
    model: nn.Module,
    layout: ChromosomeLayout,
    masks: np.ndarray | torch.Tensor,
    split: dict[str, torch.Tensor],
    device: torch.device,
    candidates_per_pass: int = 16,
    batch_size: int = 1000,
) -> np.ndarray:
    """Accuracy of every exit under every mask: (K, num_exits), K candidates scored
    ``candidates_per_pass`` at a time on tiled batches."""
    was_training = model.training
    model.eval().to(device)
    masks = torch.as_tensor(masks, device=device).bool()  # numpy or tensor, any device
    labels = split["labels"].to(device)
    images = split["images"].to(device)
    hits = None
    for first in range(0, masks.shape[0], candidates_per_pass):
        chunk = masks[first : first + candidates_per_pass]
        k = chunk.shape[0]
        correct = None
        with population_masks(model, layout, chunk):
            for b in range(0, images.shape[0], batch_size):
                x = images_to_float(images[b : b + batch_size])
                y = labels[b : b + batch_size]
                logits = torch.stack(as_exit_list(model(x.repeat(k, 1, 1, 1))))  # (E, k*B, C)
                pred = logits.argmax(-1).view(logits.shape[0], k, -1)  # (E, k, B)
                c = (pred == y).sum(-1).T  # (k, E)
                correct = c if correct is None else correct + c
        hits = correct if hits is None else torch.cat([hits, correct])
    model.train(was_training)
    return (hits.double() / labels.numel()).cpu().numpy()


def prune_physically(
    model: nn.Module, layout: ChromosomeLayout, mask: np.ndarray, input_shape: tuple[int, ...]
) -> nn.Module:
    """A genuinely smaller copy of ``model`` without the units that ``mask`` (num_bits,) drops.

    Uses torch-pruning's dependency graph, so coupled layers (BatchNorm, consumers' inputs, flatten)
    shrink together. The input model is not modified.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (layout.num_bits,):
        raise ValueError(f"mask has shape {mask.shape}, the layout expects ({layout.num_bits},)")
    if any(not mask[g.offset : g.offset + g.size].any() for g in layout.groups):
        raise ValueError("mask removes every unit of a layer; repair it first (ChromosomeLayout.repair)")
    if has_lstm(model):  # torch-pruning's LSTM pruner is broken: our own shrinker
        return prune_lstm_physically(model, layout, mask).eval()
    pruned = copy.deepcopy(model).eval()
    graph = dependency_graph(pruned, input_shape)
    modules = dict(pruned.named_modules())
    for g in layout.groups:
        drop = np.flatnonzero(~mask[g.offset : g.offset + g.size]).tolist()
        if drop:
            root = modules[g.name]
            graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, drop).prune()
    return pruned


def _float_batches(
    split: dict[str, torch.Tensor], batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(float images, labels) batches of a uint8 split, on ``device``."""
    images, labels = split["images"].to(device), split["labels"].to(device)
    return [
        (images_to_float(images[b : b + batch_size]), labels[b : b + batch_size])
        for b in range(0, images.shape[0], batch_size)
    ]


class _MaskScorer:
    """What the search needs of an exact evaluator: ``evaluate`` (per subclass) and ``accuracy`` from it."""

    def evaluate(
        self,
        masks: np.ndarray | torch.Tensor,
        split: dict[str, torch.Tensor],
        policy: tuple[float, str] | None = None,
        batch_size: int = 5000,
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def accuracy(
        self, masks: np.ndarray | torch.Tensor, split: dict[str, torch.Tensor], batch_size: int = 5000
    ) -> np.ndarray:
        """Accuracy of every exit under every mask: (K, num_exits)."""
        return self.evaluate(masks, split, batch_size=batch_size)["accuracy"]


class _Tally:
    """Counts over batches for k candidates scored together: correct predictions per exit (k, E) and, with an
    early-exit policy, the policy's correct predictions (k,) and the samples leaving at each exit (k, E)."""

    def __init__(self) -> None:
        self.hits: torch.Tensor | int = 0
        self.policy_hits: torch.Tensor | int = 0
        self.exit_counts: torch.Tensor | int = 0

    def add(
        self, logits: torch.Tensor, labels: torch.Tensor, policy: tuple[float, str] | None, candidates: int
    ) -> None:
        """Count ``logits`` (E, candidates * B, C): ``candidates`` tiles over the same ``labels`` (B,)."""
        from evoprune.core.early_exit import simulate_early_exit

        num_exits, tiled = logits.shape[0], labels.repeat(candidates)
        self.hits = self.hits + (logits.argmax(-1) == tiled).view(num_exits, candidates, -1).sum(-1).T
        if policy is not None:
            preds, used = simulate_early_exit(logits, policy[0], policy[1])
            self.policy_hits = self.policy_hits + (preds == tiled).view(candidates, -1).sum(-1)
            self.exit_counts = self.exit_counts + nn.functional.one_hot(used.view(candidates, -1), num_exits).sum(1)

    @staticmethod
    def scores(tallies: list[_Tally], n: int, policy: tuple[float, str] | None) -> dict[str, np.ndarray]:
        """``accuracy`` (K, E) and with a policy ``policy_accuracy`` (K,) and ``exit_share`` (K, E) over ``n``
        samples, the tallies' candidates in order."""

        def share(counts: list[torch.Tensor]) -> np.ndarray:
            return (torch.cat(counts).double() / n).cpu().numpy()

        result = {"accuracy": share([t.hits for t in tallies])}
        if policy is not None:
            result["policy_accuracy"] = share([t.policy_hits for t in tallies])
            result["exit_share"] = share([t.exit_counts for t in tallies])
        return result


class SlicedEvaluator(_MaskScorer):
    """Scores masks by running each candidate on its own *sliced* weights (kept rows/columns only)
    through the unchanged module code (``torch.func.functional_call``): exact, like physical pruning,
    and each candidate costs in proportion to the FLOPs it keeps."""

    def __init__(
        self,
        model: nn.Module,
        layout: ChromosomeLayout,
        device: torch.device,
        calibration_images: torch.Tensor | None = None,
        calibration_batch_size: int = 256,
    ) -> None:
        """Args:
        calibration_images: uint8 training images; when given (and the model has BatchNorm), each
            candidate's BatchNorm statistics are re-estimated on them before scoring (adaptive BN,
            EagleEye), in batches of ``calibration_batch_size``.
        """
        self.model = model.eval().to(device)
        self.device = device
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels]
        self.calibration = None
        if calibration_images is not None and self.norms:
            self.calibration = [
                images_to_float(calibration_images[b : b + calibration_batch_size].to(device))
                for b in range(0, calibration_images.shape[0], calibration_batch_size)
            ]
        self.state = {k: v.detach() for k, v in model.state_dict().items()}
        self.sliced: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []  # (prefix, out bits, in bits)
        for layer in layout.layers:
            self.sliced.append(
                (
                    layer.name,
                    torch.as_tensor(layer.out_bits, device=device),
                    torch.as_tensor(layer.in_bits, device=device),
                )
            )
        for name, bits in layout.norm_bits:
            self.sliced.append((name, torch.as_tensor(bits, device=device), None))
        # The input block (the first conv/linear to run and the channel-wise modules after it) sees the
        # same images for every candidate: its dense output is computed once per batch and each
        # candidate takes its kept channels.
        self.input_block_name, self.input_out_bits = self._input_block(layout)

    def _input_block(self, layout: ChromosomeLayout) -> tuple[str | None, torch.Tensor | None]:
        """The largest block that holds the input layer (the first conv/linear to run) and otherwise
        only channel-wise modules (activations, pooling, dropout; BatchNorm too unless it is
        re-estimated per candidate). Its output, for kept channels, is the same for every candidate."""
        modules = dict(self.model.named_modules())
        calls: dict[str, int] = {}
        order: list[str] = []

        def record(name: str):
            def hook(_module, _inputs) -> None:
                calls[name] = calls.get(name, 0) + 1
                order.append(name)

            return hook

        handles = [m.register_forward_pre_hook(record(name)) for name, m in modules.items() if name]
        with torch.no_grad():
            self.model(torch.zeros(1, *input_shape(self.model), device=self.device))
        for h in handles:
            h.remove()
        costs = {layer.name: layer for layer in layout.layers}
        first = next((n for n in order if n in costs), None)
        if first is None or (costs[first].in_bits >= 0).any() or calls[first] != 1:
            return None, None
        if any(not list(modules[n].children()) for n in order[: order.index(first)]):
            return None, None  # a leaf runs before it (e.g. a Flatten before an MLP's first linear): no image input
        channelwise = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)
        if self.calibration is None:
            channelwise += (nn.modules.batchnorm._BatchNorm,)
        block = first
        parts = first.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:depth])
            leaves = [(n, m) for n, m in modules[name].named_modules(prefix=name) if not list(m.children())]
            if calls.get(name) == 1 and all(n == first or isinstance(m, channelwise) for n, m in leaves):
                block = name
            else:
                break
        return block, torch.as_tensor(costs[first].out_bits, device=self.device)

    def params_for(self, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """State dict of the sub-network that ``mask`` (num_bits,) keeps."""
        keep = torch.cat([mask.to(self.device, torch.bool), torch.ones(1, dtype=torch.bool, device=self.device)])
        params = dict(self.state)
        for prefix, out_bits, in_bits in self.sliced:
            out_idx = keep[out_bits].nonzero().squeeze(1)
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                key = f"{prefix}.{suffix}"
                if key in params and params[key] is not None and params[key].dim() > 0:
                    params[key] = params[key].index_select(0, out_idx)
            if in_bits is not None:
                in_idx = keep[in_bits].nonzero().squeeze(1)
                params[f"{prefix}.weight"] = params[f"{prefix}.weight"].index_select(1, in_idx)
        return params

    @torch.no_grad()
    def logits(self, mask: np.ndarray | torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits of the sub-network ``mask`` (num_bits,) keeps, on float images (B, C, H, W),
        computed from sliced weights (no input-block cache; BatchNorm statistics as the model holds them
        unless calibration images were given)."""
        params = self.params_for(torch.as_tensor(np.asarray(mask, dtype=bool), device=self.device))
        if self.calibration is not None:
            self._recalibrate(params)
        with _depthwise_follows_weights(self.depthwise):
            return as_exit_list(torch.func.functional_call(self.model, params, (images.to(self.device),)))

    @torch.no_grad()
    def evaluate(
        self,
        masks: np.ndarray | torch.Tensor,
        split: dict[str, torch.Tensor],
        policy: tuple[float, str] | None = None,
        batch_size: int = 5000,
    ) -> dict[str, np.ndarray]:
        """Per-exit accuracy (K, num_exits) and, with an early-exit ``policy`` (threshold, criterion),
        the policy's accuracy (K,) and the share of samples leaving at each exit (K, num_exits)."""
        masks = torch.as_tensor(masks, device=self.device).bool()  # numpy or tensor, any device
        batches = _float_batches(split, batch_size, self.device)
        block = dict(self.model.named_modules()).get(self.input_block_name) if self.input_block_name else None
        cached = [block(x) for x, _ in batches] if block is not None else [None] * len(batches)  # dense (B, C, ...)
        tallies = []
        for mask in masks:
            params = self.params_for(mask)
            if self.calibration is not None:
                self._recalibrate(params)
            tally = _Tally()
            for (x, y), dense in zip(batches, cached, strict=True):
                with self._input_from_cache(block, dense, mask), _depthwise_follows_weights(self.depthwise):
                    logits = torch.stack(as_exit_list(torch.func.functional_call(self.model, params, (x,))))
                tally.add(logits, y, policy, candidates=1)
            tallies.append(tally)
        return _Tally.scores(tallies, split["labels"].numel(), policy)

    @contextmanager
    def _input_from_cache(
        self, block: nn.Module | None, dense_output: torch.Tensor | None, mask: torch.Tensor
    ) -> Iterator[None]:
        """Replace the input block's computation by its cached dense output, restricted to the kept channels."""
        if block is None or dense_output is None:
            yield
            return
        keep = torch.cat([mask.to(self.device, torch.bool), torch.ones(1, dtype=torch.bool, device=self.device)])
        kept = dense_output.index_select(1, keep[self.input_out_bits].nonzero().squeeze(1))
        block.forward = lambda *_args, **_kw: kept  # the block's computation is skipped
        try:
            yield
        finally:
            del block.forward  # back to the class's forward

    def _recalibrate(self, params: dict[str, torch.Tensor]) -> None:
        """Re-estimate the candidate's BatchNorm statistics (cumulative average over the calibration
        batches) in its own sliced buffers; the model's own buffers are untouched."""
        for key in [k for k in params if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]:
            params[key] = (
                torch.zeros_like(params[key]) if not key.endswith("running_var") else torch.ones_like(params[key])
            )
        saved = [(m, m.momentum) for m in self.norms]
        for m in self.norms:
            m.momentum = None  # cumulative moving average
            m.train()
        try:
            with _depthwise_follows_weights(self.depthwise):
                for x in self.calibration:
                    torch.func.functional_call(self.model, params, (x,))
        finally:
            for m, momentum in saved:
                m.momentum = momentum
                m.eval()


EvaluatorKind = Literal["auto", "sliced", "tiled"]
Precision = Literal["float32", "bfloat16"]


class TiledEvaluator(_MaskScorer):
    """Scores ``candidates_per_pass`` masks per forward: the batch tiled that many times, each tile's unit
    activations multiplied by its own mask (``population_masks``). Every candidate runs at the dense cost, but
    K candidates share one launch per layer, which keeps a GPU busy where the sliced evaluator's small
    per-candidate forwards leave it idle. Exact like the sliced evaluator (a masked unit's activation is zero),
    up to float summation order. ``precision: bfloat16`` runs the forward under autocast: for ranking only.

    Per-candidate BatchNorm re-estimation (adaptive BN) is not done here (a tiled batch would mix the
    candidates' statistics): a model with BatchNorm and calibration images is refused, use the sliced one."""

    def __init__(
        self,
        model: nn.Module,
        layout: ChromosomeLayout,
        device: torch.device,
        candidates_per_pass: int = 16,
        precision: Precision = "float32",
    ) -> None:
        if has_lstm(model):
            raise ValueError("tiled evaluation masks conv/linear units; an LSTM's are scored by the LSTM evaluator")
        if candidates_per_pass < 1:
            raise ValueError(f"candidates_per_pass must be at least 1, got {candidates_per_pass}")
        self.model, self.layout, self.device = model.eval().to(device), layout, torch.device(device)
        self.candidates_per_pass, self.precision = candidates_per_pass, precision

    def _autocast(self):
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def evaluate(
        self,
        masks: np.ndarray | torch.Tensor,
        split: dict[str, torch.Tensor],
        policy: tuple[float, str] | None = None,
        batch_size: int = 5000,
    ) -> dict[str, np.ndarray]:
        """As ``SlicedEvaluator.evaluate``; ``batch_size`` counts images per forward, all tiles together."""
        masks = torch.as_tensor(masks, device=self.device).bool()  # numpy or tensor, any device
        tallies = []
        for first in range(0, masks.shape[0], self.candidates_per_pass):
            chunk = masks[first : first + self.candidates_per_pass]
            k = chunk.shape[0]
            tally = _Tally()
            with population_masks(self.model, self.layout, chunk):
                for x, y in _float_batches(split, max(1, batch_size // k), self.device):
                    with self._autocast():
                        logits = torch.stack(as_exit_list(self.model(x.repeat(k, *([1] * (x.dim() - 1))))))
                    tally.add(logits.float(), y, policy, candidates=k)  # (E, k*B, C), tile j = candidate j
            tallies.append(tally)
        return _Tally.scores(tallies, split["labels"].numel(), policy)


@contextmanager
def _depthwise_follows_weights(convs: list[nn.Conv2d]) -> Iterator[None]:
    """While active, each depthwise conv runs with as many groups as its (sliced) weight has channels,
    so a candidate's sliced weights need no module surgery."""

    def forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        groups = self.weight.shape[0]
        return torch.nn.functional.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)

    for conv in convs:
        if conv.padding_mode != "zeros":
            raise ValueError(f"the sliced evaluator needs zero padding in depthwise convs, got {conv.padding_mode!r}")
        conv.forward = forward.__get__(conv)
    try:
        yield
    finally:
        for conv in convs:
            del conv.forward


class LSTMEvaluator(_MaskScorer):
    """Scores masks of a model with LSTMs exactly: each candidate is shrunk (``prune_lstm_physically``) and
    run with the fused LSTM kernel, so it costs what it keeps."""

    def __init__(self, model: nn.Module, layout: ChromosomeLayout, device: torch.device) -> None:
        self.model = model.eval().to(device)
        self.layout = layout
        self.device = device

    @torch.no_grad()
    def logits(self, mask: np.ndarray | torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        net = prune_lstm_physically(self.model, self.layout, np.asarray(torch.as_tensor(mask).cpu(), dtype=bool))
        return [net(images.to(self.device))]

    @torch.no_grad()
    def evaluate(
        self,
        masks: np.ndarray | torch.Tensor,
        split: dict[str, torch.Tensor],
        policy: tuple[float, str] | None = None,
        batch_size: int = 5000,
    ) -> dict[str, np.ndarray]:
        """Accuracy (K, 1) of every mask; an LSTM model has one exit, so there is no early-exit policy."""
        if policy is not None:
            raise ValueError("an LSTM model has no early exits: choose error / *_ratio objectives")
        batches = _float_batches(split, batch_size, self.device)
        hits = []
        for mask in np.asarray(torch.as_tensor(masks).cpu(), dtype=bool):
            net = prune_lstm_physically(self.model, self.layout, mask).eval()
            hits.append(sum(int((net(x).argmax(-1) == y).sum()) for x, y in batches))
        return {"accuracy": np.array(hits, dtype=float)[:, None] / split["labels"].numel()}


def mask_evaluator(
    model: nn.Module,
    layout: ChromosomeLayout,
    device: torch.device,
    calibration_images: torch.Tensor | None = None,
    kind: EvaluatorKind = "auto",
    precision: Precision = "float32",
) -> SlicedEvaluator | TiledEvaluator | LSTMEvaluator:
    """The exact evaluator for ``model``'s masks: shrunk LSTMs for a model with one; else ``kind``: ``sliced``
    (each candidate on its sliced weights: fastest on CPU), ``tiled`` (many candidates per launch: for a GPU),
    ``auto`` = tiled on CUDA unless adaptive BN needs per-candidate statistics, sliced otherwise.
    ``precision: bfloat16`` (tiled only) runs the forward under bf16 autocast."""
    device = torch.device(device)
    adaptive_bn = calibration_images is not None and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    if kind == "auto":
        kind = "tiled" if device.type == "cuda" and not adaptive_bn and not has_lstm(model) else "sliced"
    if precision != "float32" and kind != "tiled":
        raise ValueError(f"precision {precision} is for the tiled evaluator; the {kind} one scores in float32")
    if has_lstm(model):
        if kind == "tiled":
            raise ValueError("the tiled evaluator does not cover LSTMs; set the evaluator to auto or sliced")
        return LSTMEvaluator(model, layout, device)
    if kind == "tiled":
        if adaptive_bn:
            raise ValueError(
                "the tiled evaluator cannot re-estimate BatchNorm per candidate (adaptive BN): set "
                "mask_search.adaptive_bn_images: 0, or the evaluator to sliced"
            )
        return TiledEvaluator(model, layout, device, precision=precision)
    return SlicedEvaluator(model, layout, device, calibration_images)
