"""Cost of a model: FLOPs (torch.utils.flop_counter), parameter counts, wall time."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _gate_flops(steps_by_batch: int, w_ih, w_hh) -> int:
    return 2 * steps_by_batch * w_ih[0] * (w_ih[1] + w_hh[1])


def _mkldnn_lstm_layer_flops(input_shape, w_ih, w_hh, *_args, **_kwargs) -> int:
    """One fused LSTM layer on CPU: 2 FLOPs per multiply-add of the gate products, every step."""
    return _gate_flops(input_shape[0] * input_shape[1], w_ih, w_hh)


def _cudnn_lstm_flops(input_shape, weights, *_args, **_kwargs) -> int:
    """All layers of a fused LSTM on CUDA: weights hold (w_ih, w_hh[, b_ih, b_hh]) per layer."""
    matrices = [w for w in weights if len(w) == 2]
    return sum(
        _gate_flops(input_shape[0] * input_shape[1], a, b) for a, b in zip(matrices[::2], matrices[1::2], strict=True)
    )


# the counter has no formula for the fused LSTM kernels; the CUDA one is not exercised on this CPU machine
RNN_FLOP_FORMULAS = {aten.mkldnn_rnn_layer: _mkldnn_lstm_layer_flops, aten._cudnn_rnn: _cudnn_lstm_flops}


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, taught the fused LSTM kernels."""
    return FlopCounterMode(display=False, custom_mapping=RNN_FLOP_FORMULAS)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one sample of shape (C, H, W), as torch's FlopCounterMode counts them
    (a multiply-add is 2 FLOPs; element-wise ops such as ReLU and pooling are not counted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = flop_counter()
    with counter:
        model(torch.zeros(1, *input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    """Number of parameters (frozen ones included)."""
    return sum(p.numel() for p in model.parameters())


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each ``fn()``, timed in turn within every repeat (a, b, a, b, ...), so that
    the i-th times of two functions were taken moments apart (CUDA synchronised)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_median_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each ``fn()``, timed in turn within every repeat (see ``interleaved_seconds``),
    so that ratios between them compare like with like on a machine whose speed drifts."""
    return {name: statistics.median(t) for name, t in interleaved_seconds(fns, repeats, warmup).items()}


def paired_speedup(reference: list[float], times: list[float]) -> float:
    """Median over repeats of ``reference[i] / times[i]``, the two timed moments apart: steadier than a
    ratio of medians when the machine's speed drifts between repeats."""
    if len(reference) != len(times) or not times:
        raise ValueError("paired_speedup needs two equally long, non-empty lists of interleaved times")
    return statistics.median(r / t for r, t in zip(reference, times, strict=True))
