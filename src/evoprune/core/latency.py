"""A latency model of the machine a network will run on: per-layer tables measured here, one calibrated sum.

FLOPs mislead about speed: on this CPU a 3x3 conv on 32x32 maps at batch 256 costs as much with 11
channels as with 16, and LeNet-5's first conv 4.4 ms per 1000 images with 1 filter against 5.8 ms with 6.
So, as NetAdapt (Yang et al. 2018) and HALP (Shen et al. 2022) do, every conv/linear layer of the chromosome
layout is timed alone on this machine over a grid of kept input and output units, at the feature-map size
it sees in the network, followed by the channel-wise modules that run right after it in the network
(BatchNorm, activation, pooling; found by a probe forward), all sized to the kept units; an LSTM layer is
timed whole (every time step, the fused kernel) at its kept inputs and hidden units. A mask's
predicted latency is ``intercept + slope * sum(table entries)``, each layer's entry interpolated
bilinearly between grid points, vectorised over a population. The intercept and slope are fitted by least
squares to whole pruned networks measured here (``calibration_masks``): they take the parts no table holds
(functional activations, residual adds, flattening, the framework's per-op overhead) in proportion.

Whole networks are timed *paired*: each pruned network alternately with the dense one, its latency taken as
the median over repeats of pruned / dense times the dense network's median. A shared machine's speed drifts
by more than the differences between masks; a pair timed moments apart drifts together, so calibration and
validation compare like with like. Timing first fixes glibc's allocator thresholds (``steady_allocator``):
by default glibc raises its mmap threshold as large blocks are freed, so a fresh process maps and faults in
every activation buffer anew while a long-running one reuses heap memory; the same LeNet-5 masks measured
0.75 / 0.43 of the dense time in a fresh process and 0.86 / 0.53 after a training workload, and 0.87 / 0.54
either way with the thresholds fixed (the steady state of a long-running inference process). Timing runs
with ``threads`` torch threads (default 1: on this 2-core virtual machine two threads vary by +-10% from one
repeat to the next, one thread by +-2%; and a single inference thread is what most edge deployments use).

A dimension of at most 16 units is measured at every count the search can keep (with ``round_to`` > 1, its
multiples). Larger ones on ``grid_points`` counts, the inner ones multiples of 8 (the SIMD width oneDNN blocks
channels by); a count between two points is interpolated, which underestimates the step an odd count costs:
search with ``round_to: 8`` to stay on the grid's kind of counts.

``runtime: onnxruntime`` times the same layers and networks exported to ONNX in ONNX Runtime's CPU provider
(``export.onnxruntime_call``) instead of torch eager: the tables of a deployment that runs ONNX Runtime.

A model is keyed by the device, torch version, threads, every measurement setting and the architecture
(module tree and tensor shapes, not the weights, which do not change latency), and ONNX Runtime's version when
it is the runtime: ``check_key`` refuses a
model measured elsewhere or for other settings instead of silently reusing it, and ``cached_or_profiled``
reuses a model from a cache only under the same key.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import json
import logging
import re
import statistics
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnxruntime
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from torch import nn
from tqdm.auto import tqdm

from evoprune.core.cost import interleaved_median_seconds, interleaved_seconds, paired_speedup
from evoprune.core.export import onnxruntime_call
from evoprune.core.lstm import GATES, lstm_steps
from evoprune.core.masking import prune_physically
from evoprune.core.models.adapter import input_shape
from evoprune.core.units import ChromosomeLayout

logger = logging.getLogger(__name__)


class LatencySettings(BaseModel):
    """How a latency model is measured."""

    model_config = ConfigDict(extra="forbid")

    batch_size: PositiveInt = 1000
    memory_format: Literal["channels_last", "contiguous"] = "channels_last"
    threads: PositiveInt | None = 1  # torch threads while timing (the target's inference threads); null: as is
    repeats: PositiveInt = 5  # timings per entry (median)
    grid_points: int = Field(5, ge=2)  # measured counts per prunable dimension, snapped to multiples of 8
    calibration_masks: NonNegativeInt = 16  # random pruned networks timed whole to fit intercept and slope
    seed: int = 0  # of the calibration masks
    round_to: PositiveInt = 1  # the calibration masks keep multiples of this many units, like the search's
    # what runs the network on the target: torch eager, or ONNX Runtime's CPU provider (a network exported to
    # ONNX; memory_format does not apply, ONNX Runtime picks its own layout)
    runtime: Literal["torch", "onnxruntime"] = "torch"


TABLES_VERSION = "3"  # how tables are measured (grid, pairing, allocator): tables of another version are not reused
_STEADY_BYTES = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def steady_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds at 1 GiB for this process, so that freed activation buffers stay in
    the heap and every forward reuses memory the same way, whatever ran before (no effect, and False, where
    the C library is not glibc). It lasts for the process: memory freed is kept for reuse, not returned."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _STEADY_BYTES))
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def timing_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` (None: unchanged) for the block, restored after it."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LatencyKeyError(ValueError):
    """A latency model measured on another device, for other settings or for another model."""


class UnsupportedLatencyModel(ValueError):
    """A network with layers the latency tables cannot time (or a latency model standing for one)."""


@dataclass(frozen=True)
class LayerTable:
    """Milliseconds of one layer (and its usual followers) at batch ``batch_size`` on a grid of kept units.

    The grid is made non-decreasing along both axes when the table is built (``monotone_grid``): a layer that
    keeps more units is never faster, and timing noise on a small layer can say otherwise. A search on noisy
    tables finds masks that keep more units yet predict faster than every layer at its floor, and then no
    baseline can be fitted to their budget."""

    name: str
    in_units: np.ndarray  # kept input features/channels measured (ascending)
    out_units: np.ndarray  # kept output units measured (ascending)
    ms: np.ndarray  # (len(in_units), len(out_units))

    def __post_init__(self) -> None:
        object.__setattr__(self, "ms", monotone_grid(self.ms))

    def lookup(self, kept_in: np.ndarray, kept_out: np.ndarray) -> np.ndarray:
        """Bilinear interpolation (linear extrapolation at the edges is clamped to the grid)."""
        i, wi = _bracket(self.in_units, kept_in)
        o, wo = _bracket(self.out_units, kept_out)
        ms = self.ms
        if ms.shape[0] == 1:
            ms = np.vstack([ms, ms])
        if ms.shape[1] == 1:
            ms = np.hstack([ms, ms])
        return (
            (1 - wi) * (1 - wo) * ms[i, o]
            + (1 - wi) * wo * ms[i, o + 1]
            + wi * (1 - wo) * ms[i + 1, o]
            + wi * wo * ms[i + 1, o + 1]
        )


def monotone_grid(ms: np.ndarray) -> np.ndarray:
    """``ms`` made non-decreasing along each axis: per axis, the mean of its running maximum (from the small
    end) and its running minimum (from the large end). Both are order-preserving, so the second axis keeps
    the first one's order; a grid that is already monotone comes back unchanged."""
    out = np.asarray(ms, dtype=float)
    for axis in range(out.ndim):
        rising = np.maximum.accumulate(out, axis=axis)
        falling = np.flip(np.minimum.accumulate(np.flip(out, axis=axis), axis=axis), axis=axis)
        out = (rising + falling) / 2
    return out


def _bracket(grid: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower grid index of each query and its weight towards the next point (0 for a one-point grid)."""
    q = np.asarray(q, dtype=float)
    if len(grid) == 1:
        return np.zeros(q.shape, dtype=int), np.zeros(q.shape)
    q = np.clip(q, grid[0], grid[-1])
    idx = np.clip(np.searchsorted(grid, q, side="right") - 1, 0, len(grid) - 2)
    return idx, (q - grid[idx]) / (grid[idx + 1] - grid[idx])


@dataclass(frozen=True)
class LatencyModel:
    """Per-layer tables + the calibrated sum; ``predict_ms`` for any population of masks."""

    key: dict[str, Any]
    tables: tuple[LayerTable, ...]
    intercept_ms: float
    slope: float
    dense_ms: float  # the dense network measured whole
    unavailable: str = ""  # why this network has no tables (then every prediction raises it); "" = it has

    @classmethod
    def without_tables(cls, key: dict[str, Any], reason: str) -> LatencyModel:
        """The stand-in for a network the tables cannot time: it keeps the reason and raises it when asked for
        a prediction, so a FLOPs search runs and a latency search fails saying why."""
        return cls(key, (), 0.0, 1.0, float("nan"), reason)

    @property
    def available(self) -> bool:
        return not self.unavailable

    def table_sum(self, layout: ChromosomeLayout, masks: np.ndarray) -> np.ndarray:
        """(K,) sum over layers of their table entries at each mask's kept units."""
        if self.unavailable:
            raise UnsupportedLatencyModel(f"no latency tables for this network: {self.unavailable}")
        m = np.asarray(masks, dtype=bool)
        padded = np.concatenate([m, np.ones((m.shape[0], 1), dtype=bool)], axis=1)  # bit -1 -> kept
        layers = {layer.name: layer for layer in layout.layers}
        if set(layers) != {t.name for t in self.tables}:
            raise LatencyKeyError("the latency tables were measured on a network with other layers; profile it again")
        total = np.zeros(m.shape[0])
        for table in self.tables:
            layer = layers[table.name]
            total += table.lookup(padded[:, layer.in_bits].sum(1), padded[:, layer.out_bits].sum(1))
        return total

    def predict_ms(self, layout: ChromosomeLayout, masks: np.ndarray) -> np.ndarray:
        """(K,) predicted milliseconds per batch of ``key['batch_size']``."""
        return self.intercept_ms + self.slope * self.table_sum(layout, masks)

    def ratio(self, layout: ChromosomeLayout, masks: np.ndarray) -> np.ndarray:
        """(K,) predicted latency relative to the dense network's prediction."""
        dense = self.predict_ms(layout, np.ones((1, layout.num_bits), dtype=bool))[0]
        return self.predict_ms(layout, masks) / dense

    def check_key(self, expected: dict[str, Any]) -> None:
        """Refuse tables measured for another device, batch size, layout, torch, threads or model."""
        differ = {k: (self.key.get(k), v) for k, v in expected.items() if self.key.get(k) != v}
        if differ:
            what = ", ".join(f"{k}: tables {a!r} vs now {b!r}" for k, (a, b) in differ.items())
            raise LatencyKeyError(f"latency tables do not match this run ({what}); profile the model again")

    def state(self) -> dict[str, Any]:
        """Plain tensors and strings (``torch.save`` it, ``torch.load(..., weights_only=True)`` it back)."""
        return {
            "key": {k: str(v) for k, v in self.key.items()},
            "intercept_ms": self.intercept_ms,
            "slope": self.slope,
            "dense_ms": self.dense_ms,
            "unavailable": self.unavailable,
            "tables": [
                {
                    "name": t.name,
                    "in_units": torch.as_tensor(t.in_units),
                    "out_units": torch.as_tensor(t.out_units),
                    "ms": torch.as_tensor(t.ms),
                }
                for t in self.tables
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LatencyModel:
        tables = tuple(
            LayerTable(t["name"], t["in_units"].numpy(), t["out_units"].numpy(), t["ms"].numpy())
            for t in state["tables"]
        )
        return cls(
            dict(state["key"]),
            tables,
            float(state["intercept_ms"]),
            float(state["slope"]),
            float(state["dense_ms"]),
            str(state.get("unavailable", "")),
        )


def latency_key(model: nn.Module, settings: LatencySettings, device: torch.device) -> dict[str, Any]:
    """What a latency model's figures depend on (all strings, as saved): device, torch, threads, every
    measurement setting and the architecture."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (_cpu_name() or "cpu")
    threads = settings.threads if settings.threads is not None else torch.get_num_threads()
    measured = settings.model_dump(exclude={"threads"})
    runtime = {"onnxruntime": onnxruntime.__version__} if settings.runtime == "onnxruntime" else {}
    return {
        "device": f"{device.type}:{name}",
        "torch": torch.__version__,
        **runtime,
        "tables_version": TABLES_VERSION,
        "threads": str(threads),
        **{k: str(v) for k, v in measured.items()},
        "model": architecture_digest(model),
    }


def _runner(net: nn.Module, x: torch.Tensor, settings: LatencySettings, layer: bool = False) -> Callable[[], object]:
    """``net(x)`` as the settings' runtime runs it (built outside inference mode: the ONNX export traces); a
    table's ``layer`` is exported with the faster TorchScript-based exporter, a whole network with torch.export."""
    if settings.runtime == "onnxruntime":
        return onnxruntime_call(net, x, settings.threads, "torchscript" if layer else "dynamo")
    return lambda: net(x)


def check_runtime(settings: LatencySettings, device: torch.device) -> None:
    """ONNX Runtime tables are timed with its CPU provider, so only for a CPU device."""
    if settings.runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(
            f"latency_profile.runtime 'onnxruntime' times networks with ONNX Runtime's CPU provider, but the device "
            f"is {device}; set `device: cpu` for this run, or `runtime: torch` to time on {device}."
        )


def architecture_digest(model: nn.Module) -> str:
    """16 hex digits of the module tree (every module's repr: kinds, sizes, strides) and the tensor shapes;
    the same for networks that differ only in their weights."""
    shapes = [(name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]
    return hashlib.sha256(json.dumps([repr(model), shapes], default=str).encode()).hexdigest()[:16]


def key_digest(key: Mapping[str, Any]) -> str:
    """16 hex digits naming a latency key (the file name of its tables in a cache)."""
    return hashlib.sha256(json.dumps({k: str(v) for k, v in key.items()}, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


EVERY_COUNT_UP_TO = 16  # a dimension this small is measured at every count


def unit_grid(size: int, points: int, round_to: int = 1) -> np.ndarray:
    """Counts at which a dimension of ``size`` units is measured: every count a search can keep when ``size`` is
    at most ``points`` or ``EVERY_COUNT_UP_TO`` (a small layer's cost steps with each count: LeNet-5's conv2 at
    5 of 16 filters costs as at 8, which interpolating between 1, 8 and 16 misses by 10%) — with ``round_to``
    > 1 only its multiples and ``size``, as the search keeps; beyond, ``points`` counts from 1 to ``size``,
    the inner ones snapped to multiples of 8 when ``size`` >= 16."""
    if size <= max(points, EVERY_COUNT_UP_TO):
        counts = np.arange(1, size + 1)
        if 1 < round_to < size:
            counts = counts[(counts % round_to == 0) | (counts == size)]
        return counts
    raw = np.linspace(1, size, points)
    if size >= 16:
        raw[1:-1] = np.maximum(8, np.round(raw[1:-1] / 8) * 8)
    return np.unique(np.round(raw).astype(int))


def _fmt(settings: LatencySettings) -> torch.memory_format:
    return torch.channels_last if settings.memory_format == "channels_last" else torch.contiguous_format


CHANNELWISE = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
)


@dataclass(frozen=True)
class _Probe:
    input_shape: tuple[int, ...]  # per sample
    followers: tuple[nn.Module, ...]  # the channel-wise modules that run right after it (norm, activation, pool)


def _probe(model: nn.Module, names: list[str], device: torch.device) -> dict[str, _Probe]:
    """Per named layer: its per-sample input shape and the channel-wise modules run right after it, from
    one probe forward."""
    modules = dict(model.named_modules())
    leaves = {m: n for n, m in model.named_modules() if n and not list(m.children())}
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(module: nn.Module, inputs: tuple) -> None:
        name = leaves[module]
        order.append(name)
        shapes.setdefault(name, tuple(inputs[0].shape[1:]))

    handles = [m.register_forward_pre_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape(model), device=device))
    finally:
        for h in handles:
            h.remove()
    probes = {}
    for name in names:
        i = order.index(name)
        followers = []
        for later in order[i + 1 :]:
            if not isinstance(modules[later], CHANNELWISE):
                break
            followers.append(modules[later])
        probes[name] = _Probe(shapes[name], tuple(followers))
    return probes


def _standalone(module: nn.Module, kept_in: int, kept_out: int, followers: tuple[nn.Module, ...] = ()) -> nn.Module:
    """The layer with ``kept_in`` inputs and ``kept_out`` outputs, then its followers (norms re-made with
    ``kept_out`` channels, the others copied)."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        if module.groups > 1 and not depthwise:
            raise UnsupportedLatencyModel(
                f"latency tables support plain and depthwise convs, not groups={module.groups}"
            )
        layer: nn.Module = nn.Conv2d(
            kept_out if depthwise else kept_in,
            kept_out,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            groups=kept_out if depthwise else 1,
            bias=module.bias is not None,
        )
    elif isinstance(module, nn.Linear):
        layer = nn.Linear(kept_in, kept_out, bias=module.bias is not None)
    else:
        raise UnsupportedLatencyModel(f"latency tables cover Conv2d and Linear layers, not {type(module).__name__}")
    after = [
        type(m)(kept_out) if isinstance(m, nn.modules.batchnorm._BatchNorm) else copy.deepcopy(m) for m in followers
    ]
    return nn.Sequential(layer, *after)


def _measure_layer(
    module: nn.Module,
    probe: _Probe,
    in_units: np.ndarray,
    out_units: np.ndarray,
    settings: LatencySettings,
    device: torch.device,
) -> np.ndarray:
    fmt = _fmt(settings)
    fns = {}
    for a, kin in enumerate(in_units):
        for b, kout in enumerate(out_units):
            op = _standalone(module, int(kin), int(kout), probe.followers).eval().to(device)
            if isinstance(module, nn.Conv2d):
                depthwise = module.groups > 1
                shape = (settings.batch_size, int(kout) if depthwise else int(kin), *probe.input_shape[1:])
                x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
                op = op.to(memory_format=fmt)
            else:
                x = torch.randn(settings.batch_size, int(kin), device=device)
            fns[(a, b)] = _runner(op, x, settings, layer=True)
    return _grid_ms(fns, (len(in_units), len(out_units)), settings.repeats)


def _grid_ms(fns: dict[tuple[int, int], Callable[[], object]], shape: tuple[int, int], repeats: int) -> np.ndarray:
    """Milliseconds of each grid entry's call (interleaved medians), as a ``shape`` array."""
    with torch.inference_mode():
        seconds = interleaved_median_seconds(fns, repeats)
    ms = np.zeros(shape)
    for (a, b), sec in seconds.items():
        ms[a, b] = 1e3 * sec
    return ms


@dataclass(frozen=True)
class PairedTimes:
    """Whole networks timed against the dense one: ``ratio[k]`` = median over repeats of mask k's time over
    the dense network's, timed moments apart; ``dense_ms`` the dense network's median over all pairs."""

    ratio: np.ndarray  # (K,)
    dense_ms: float

    @property
    def ms(self) -> np.ndarray:
        """(K,) each mask's latency on the dense network's median scale."""
        return self.ratio * self.dense_ms


def measure_masks_ms(
    model: nn.Module, layout: ChromosomeLayout, masks: np.ndarray, settings: LatencySettings, device: torch.device
) -> PairedTimes:
    """Each mask's physically pruned network timed alternately with the dense network (inference mode, the
    settings' runtime, memory layout and threads; ``repeats`` pairs per mask, after one warm-up each)."""
    check_runtime(settings, device)
    fmt = _fmt(settings)
    shape = input_shape(model)
    x = torch.rand(settings.batch_size, *shape, device=device).contiguous(memory_format=fmt)
    steady_allocator()
    dense = copy.deepcopy(model).eval().to(device=device, memory_format=fmt)
    nets = [  # built before timing: torch-pruning traces with autograd, outside inference mode
        (dense if mask.all() else prune_physically(model, layout, mask, shape)).eval().to(device, memory_format=fmt)
        for mask in np.asarray(masks, dtype=bool)
    ]
    run_dense = _runner(dense, x, settings)
    ratios, dense_seconds = [], []
    with timing_threads(settings.threads):
        for net in tqdm(nets, desc="timing pruned networks", unit="net", leave=False):
            run_pruned = run_dense if net is dense else _runner(net, x, settings)
            with torch.inference_mode():
                times = interleaved_seconds({"dense": run_dense, "pruned": run_pruned}, settings.repeats)
            ratios.append(paired_speedup(times["pruned"], times["dense"]))  # median of pruned / dense per pair
            dense_seconds += times["dense"]
    return PairedTimes(np.array(ratios), 1e3 * statistics.median(dense_seconds) if dense_seconds else float("nan"))


def calibration_masks(layout: ChromosomeLayout, count: int, seed: int, round_to: int = 1) -> np.ndarray:
    """``count`` random masks keeping 20-100% of the units (layer by layer), rounded like the search's."""
    rng = np.random.default_rng(seed)
    keep = rng.uniform(0.2, 1.0, size=(count, 1))
    return layout.repair(rng.random((count, layout.num_bits)) < keep, round_to=round_to, rng=rng)


def profile_latency(
    model: nn.Module,
    layout: ChromosomeLayout,
    settings: LatencySettings,
    device: torch.device,
) -> LatencyModel:
    """Measure every layer's table on this machine, then fit intercept and slope on the dense network and
    ``settings.calibration_masks`` random pruned ones, timed whole (paired with the dense network).

    An LSTM layer k is timed as a single-layer ``nn.LSTM`` over the model's sequence length, keyed by its kept
    inputs and hidden units, in the table of its ``weight_ih_l{k}`` part; its ``weight_hh_l{k}`` part's table
    is zero (the recurrence is inside that timing).

    Raises:
        UnsupportedLatencyModel: a layer the tables cannot time (e.g. a grouped, not depthwise, conv).
    """
    check_runtime(settings, device)
    steady_allocator()
    model = model.eval().to(device)
    modules = dict(model.named_modules())
    recurrent = {layer.name: _lstm_part(layer.name, modules) for layer in layout.layers}
    probes = _probe(model, [layer.name for layer in layout.layers if recurrent[layer.name] is None], device)
    tables = []
    with timing_threads(settings.threads):
        for layer in tqdm(layout.layers, desc="latency tables", unit="layer", leave=False):
            part = recurrent[layer.name]
            if part is None:
                tables.append(_layer_table(modules[layer.name], layer, probes[layer.name], settings, device))
            else:
                tables.append(_lstm_table(model, layer, part, settings, device))
    masks = np.vstack(
        [
            np.ones((1, layout.num_bits), dtype=bool),
            calibration_masks(layout, settings.calibration_masks, settings.seed, settings.round_to),
        ]
    )
    measured = measure_masks_ms(model, layout, masks, settings, device)
    partial = LatencyModel(latency_key(model, settings, device), tuple(tables), 0.0, 1.0, measured.dense_ms)
    intercept, slope = calibrate(partial.table_sum(layout, masks), measured.ms)
    return LatencyModel(partial.key, partial.tables, intercept, slope, measured.dense_ms)


def _layer_table(
    module: nn.Module, layer: Any, probe: _Probe, settings: LatencySettings, device: torch.device
) -> LayerTable:
    """One layer's table over its grid of kept input and output units."""
    in_dim, out_dim = len(layer.in_bits), len(layer.out_bits)

    def grid(size: int) -> np.ndarray:
        return unit_grid(size, settings.grid_points, settings.round_to)

    out_units = grid(out_dim) if (layer.out_bits >= 0).any() else np.array([out_dim])
    if (layer.in_bits >= 0).any() and not (isinstance(module, nn.Conv2d) and module.groups > 1):
        channels = len(np.unique(layer.in_bits))  # a linear after a flatten: each channel feeds many features
        per_unit = in_dim // channels if in_dim % channels == 0 else 1
        in_units = grid(in_dim // per_unit) * per_unit
    else:
        in_units = np.array([in_dim])
    ms = _measure_layer(module, probe, in_units, out_units, settings, device)
    return LayerTable(layer.name, in_units, out_units, ms)


_LSTM_PART = re.compile(r"^(?P<module>.+)\.weight_(?P<kind>ih|hh)_l(?P<layer>\d+)$")


@dataclass(frozen=True)
class _LSTMPart:
    module: str  # the nn.LSTM's name in the model
    kind: str  # ih: the layer's timing lives in its table | hh: zero
    layer: int


def _lstm_part(name: str, modules: Mapping[str, nn.Module]) -> _LSTMPart | None:
    """Which LSTM layer's weight a layout layer is (``core.lstm``'s layout names them ``<lstm>.weight_ih_l<k>``
    and ``<lstm>.weight_hh_l<k>``); None for a module layer."""
    found = _LSTM_PART.match(name)
    if found is None or not isinstance(modules.get(found["module"]), nn.LSTM):
        return None
    return _LSTMPart(found["module"], found["kind"], int(found["layer"]))


def _lstm_table(
    model: nn.Module,
    layer: Any,
    part: _LSTMPart,
    settings: LatencySettings,
    device: torch.device,
) -> LayerTable:
    """LSTM layer ``part.layer`` timed whole (all time steps, fused kernel) at its grid of kept inputs and
    hidden units; the table's output axis counts gate rows (4 per hidden unit, as the layout's bits do)."""
    in_dim, out_dim = len(layer.in_bits), len(layer.out_bits)
    if part.kind == "hh":
        return LayerTable(layer.name, np.array([in_dim]), np.array([out_dim]), np.zeros((1, 1)))
    lstm = dict(model.named_modules())[part.module]
    steps = lstm_steps(model, part.module, input_shape(model))
    hidden = unit_grid(out_dim // GATES, settings.grid_points, settings.round_to)
    in_units = unit_grid(in_dim, settings.grid_points, settings.round_to) if (layer.in_bits >= 0).any() else [in_dim]
    fns = {}
    for a, kin in enumerate(in_units):
        for b, kept in enumerate(hidden):
            op = nn.LSTM(int(kin), int(kept), 1, bias=lstm.bias, batch_first=True).eval().to(device)
            x = torch.randn(settings.batch_size, steps, int(kin), device=device)
            fns[(a, b)] = _runner(op, x, settings, layer=True)
    ms = _grid_ms(fns, (len(in_units), len(hidden)), settings.repeats)
    return LayerTable(layer.name, np.asarray(in_units), GATES * hidden, ms)


def cached_or_profiled(
    cache: Mapping[str, LatencyModel],
    model: nn.Module,
    layout: ChromosomeLayout,
    settings: LatencySettings,
    device: torch.device,
) -> LatencyModel:
    """The cached latency model of exactly this key (device, torch, threads, settings, architecture), else a
    fresh profile; a network the tables cannot time gets ``LatencyModel.without_tables`` (with a warning)."""
    key = latency_key(model, settings, device)
    cached = cache.get(key_digest(key))
    if cached is not None and cached.key == key:
        logger.info("latency tables of this network, device and settings reused (%s)", key_digest(key))
        return cached
    try:
        return profile_latency(model, layout, settings, device)
    except UnsupportedLatencyModel as exc:
        logger.warning("no latency tables: %s", exc)
        return LatencyModel.without_tables(key, str(exc))


def validate_latency(
    model: nn.Module,
    layout: ChromosomeLayout,
    latency: LatencyModel,
    masks: np.ndarray,
    settings: LatencySettings,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Predicted vs measured latency of each mask's physically pruned network (timed paired with the dense
    one, ``measure_masks_ms``). ``ratio_error`` compares latency relative to the dense network (what the
    search's ``latency_ratio`` objective uses; free of the machine's drift since profiling); ``ms_error``
    the absolute milliseconds (drift included). Errors are predicted / measured - 1."""
    measured = measure_masks_ms(model, layout, masks, settings, device)
    predicted_ratio = latency.ratio(layout, masks)
    predicted_ms = latency.predict_ms(layout, masks)
    return {
        "predicted_ratio": predicted_ratio,
        "measured_ratio": measured.ratio,
        "ratio_error": predicted_ratio / measured.ratio - 1,
        "predicted_ms": predicted_ms,
        "measured_ms": measured.ms,
        "ms_error": predicted_ms / measured.ms - 1,
    }


def validation_masks(
    layout: ChromosomeLayout, members: np.ndarray, count: int, settings: LatencySettings
) -> tuple[np.ndarray, list[str]]:
    """The chosen members and ``count`` random pruned masks held out from the calibration (another seed,
    rounded like the search's), with a kind per row (``member`` or ``random``)."""
    held_out = calibration_masks(layout, count, settings.seed + 1000, settings.round_to)
    masks = np.vstack([np.asarray(members, dtype=bool).reshape(-1, layout.num_bits), held_out])
    return masks, ["member"] * (len(masks) - count) + ["random"] * count


def calibrate(table_sums: np.ndarray, measured_ms: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of measured ~ table sum; row 0 is the dense network. A fit that would make smaller
    networks slower (slope <= 0: timing noise on a tiny model) falls back to scaling the sum to the dense time."""
    if len(table_sums) >= 2 and np.ptp(table_sums) > 0:
        slope, intercept = np.polyfit(table_sums, measured_ms, 1)
        if slope > 0:
            return float(intercept), float(slope)
    return 0.0, float(measured_ms[0] / table_sums[0])


def prediction_errors(predicted_ms: np.ndarray, measured_ms: np.ndarray) -> dict[str, float]:
    """Relative errors (predicted / measured - 1): share within 10%, median and worst absolute error."""
    rel = np.asarray(predicted_ms) / np.asarray(measured_ms) - 1
    return {
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "median_abs_error": float(np.median(np.abs(rel))),
        "max_abs_error": float(np.max(np.abs(rel))),
        "count": float(len(rel)),
    }


__all__ = [
    "LatencyKeyError",
    "LatencyModel",
    "LatencySettings",
    "LayerTable",
    "PairedTimes",
    "UnsupportedLatencyModel",
    "architecture_digest",
    "cached_or_profiled",
    "calibration_masks",
    "key_digest",
    "latency_key",
    "check_runtime",
    "measure_masks_ms",
    "prediction_errors",
    "profile_latency",
    "steady_allocator",
    "timing_threads",
    "unit_grid",
    "validate_latency",
    "validation_masks",
]
