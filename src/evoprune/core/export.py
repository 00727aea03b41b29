"""Deployable files of a (pruned) network: TorchScript and ONNX, loadable without evoprune installed.

Both take float images, normalised as the model's ``forward`` expects (``data.images_to_float``).
A ``MultiExitNet`` gives one output per exit (``exit1``, ``exit2``, ...), a plain backbone ``logits``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from evoprune.core import atomic
from evoprune.core.exits import MultiExitNet, input_shape
from evoprune.core.train import as_exit_list


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Save a traced TorchScript module: it loads with ``torch.jit.load`` without evoprune installed."""
    model = model.eval().cpu()
    example = torch.zeros(1, *input_shape(model))
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.15 marks tracing deprecated in favour of torch.export; TorchScript files are still
        # what C++/mobile runtimes load, so we keep offering them (ONNX is the torch.export path).
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
        traced = torch.jit.trace(model, example, strict=False)
    path = Path(path)
    # to bytes first: TorchScript's C++ file writer aborts the whole process when a write fails (disk full)
    atomic.write_bytes(path, traced.save_to_buffer())
    return path


def output_names(model: nn.Module) -> list[str]:
    """ONNX output names: ``exit1``..``exitE`` for a multi-exit network, else ``logits``."""
    if isinstance(model, MultiExitNet):
        return [f"exit{e + 1}" for e in range(model.num_exits)]
    return ["logits"]


def export_onnx(model: nn.Module, path: str | Path, batch_size_dynamic: bool = True) -> Path:
    """Save ``model`` (eval, CPU) as one self-contained ONNX file with input ``images`` (B, C, H, W).

    Uses the ``torch.export``-based exporter (``dynamo=True``); the batch dimension stays symbolic
    (``batch``) unless ``batch_size_dynamic`` is False, which fixes it to 1.
    """
    model = model.eval().cpu()
    example = torch.zeros(1, *input_shape(model))
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if batch_size_dynamic else None
    path = Path(path)
    with atomic.atomic_path(path) as tmp:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            dynamo=True,
            verbose=False,
            external_data=False,  # weights inside the file
            input_names=["images"],
            output_names=output_names(model),
            dynamic_shapes=dynamic_shapes,
        )
    return path


def onnx_max_abs_error(model: nn.Module, path: str | Path, images: torch.Tensor) -> float:
    """Largest absolute difference, over all outputs, between ONNX Runtime (CPU) running ``path`` and
    ``model`` (eval, CPU) on the same float ``images`` (B, C, H, W)."""
    model = model.eval().cpu()
    images = images.detach().cpu().float()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        expected = as_exit_list(model(images))
    if len(got) != len(expected):
        raise ValueError(f"{path} has {len(got)} outputs, the model returns {len(expected)}; export it again")
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))


def onnxruntime_call(
    model: nn.Module, example: torch.Tensor, threads: int | None = 1, exporter: str = "dynamo"
) -> Callable[[], object]:
    """A function that runs ``model`` once on ``example`` (CPU, its exact shape) in an ONNX Runtime session with
    ``threads`` intra-op threads (None: ONNX Runtime's default): what latency tables time for
    ``runtime: onnxruntime``.

    ``exporter``: ``dynamo`` (``torch.export``, the exporter of ``export_onnx``; ~1 s per network) or
    ``torchscript`` (``dynamo=False``, ~30 ms per small network, for the hundreds of single layers a table
    holds; it lacks some ops, e.g. adaptive pooling to a size that does not divide the input).
    """
    model = model.eval().cpu()
    example = example.detach().cpu().float().contiguous()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        if exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["images"])
            graph = buffer.getvalue()
        else:
            program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, input_names=["images"])
            graph = program.model_proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    feed = {"images": example.numpy()}
    return lambda: session.run(None, feed)
