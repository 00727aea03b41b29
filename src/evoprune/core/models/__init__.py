"""Networks built from a typed spec: built-ins, torchvision constructors and the user's factories.

``train_dense.model`` is one of
- a built-in (``source: builtin``, the default): ``lenet5``, ``lenet300``, ``vgg``, ``resnet_cifar``, ``alexnet_small``,
  ``lstm_seq`` (a row-sequential LSTM);
- ``source: torchvision`` with a constructor ``name`` (``resnet18``, ``mobilenet_v2``, ...);
- ``source: factory`` with ``factory: "package.module:function"`` and ``kwargs``.
Every built model carries ``model.spec``, a plain dict that rebuilds the architecture: checkpoints
store ``spec`` + ``state_dict`` and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import BaseModel, Discriminator, Tag, TypeAdapter
from torch import nn

from evoprune.core.models.alexnet_small import AlexNetSmall, AlexNetSmallSpec
from evoprune.core.models.base import StagedNet
from evoprune.core.models.lenet5 import LeNet5, LeNet5Spec
from evoprune.core.models.lenet300 import LeNet300, LeNet300Spec
from evoprune.core.models.lstm_seq import LSTMSeq, LSTMSeqSpec
from evoprune.core.models.resnet_cifar import ResNetCifar, ResNetCifarSpec
from evoprune.core.models.sources import (
    BUILTIN_NAMES,
    FactorySpec,
    ModelSourceError,
    TorchvisionSpec,
    build_factory,
    build_torchvision,
)
from evoprune.core.models.vgg import VGGNet, VGGSpec

BUILTIN_CLASSES: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "lenet5": (LeNet5Spec, LeNet5),
    "lenet300": (LeNet300Spec, LeNet300),
    "vgg": (VGGSpec, VGGNet),
    "resnet_cifar": (ResNetCifarSpec, ResNetCifar),
    "alexnet_small": (AlexNetSmallSpec, AlexNetSmall),
    "lstm_seq": (LSTMSeqSpec, LSTMSeq),
}


def _kind(value: Any) -> str | None:
    """Tag of a spec: its ``source`` when not built-in, else its built-in ``name``."""
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, k, d)
    source = get("source", "builtin")
    return get("name") if source == "builtin" else source


AnySpec = (
    LeNet5Spec
    | LeNet300Spec
    | VGGSpec
    | ResNetCifarSpec
    | AlexNetSmallSpec
    | LSTMSeqSpec
    | TorchvisionSpec
    | FactorySpec
)
ModelSpec = Annotated[
    Annotated[LeNet5Spec, Tag("lenet5")]
    | Annotated[LeNet300Spec, Tag("lenet300")]
    | Annotated[VGGSpec, Tag("vgg")]
    | Annotated[ResNetCifarSpec, Tag("resnet_cifar")]
    | Annotated[AlexNetSmallSpec, Tag("alexnet_small")]
    | Annotated[LSTMSeqSpec, Tag("lstm_seq")]
    | Annotated[TorchvisionSpec, Tag("torchvision")]
    | Annotated[FactorySpec, Tag("factory")],
    Discriminator(
        _kind,
        custom_error_type="unknown_model",
        custom_error_message="unknown model: `source` must be builtin (default), torchvision or factory, and a "
        "built-in `name` one of 'lenet5', 'lenet300', 'vgg', 'resnet_cifar', 'alexnet_small', 'lstm_seq'",
    ),
]
_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelSpec)
assert set(BUILTIN_NAMES) == set(BUILTIN_CLASSES), "sources.BUILTIN_NAMES must list every built-in model"


def parse_model_spec(spec: dict[str, Any] | AnySpec) -> AnySpec:
    """Validate a spec dict (e.g. from a checkpoint); unknown names list the known ones."""
    if isinstance(spec, BaseModel):
        return spec
    return _SPEC_ADAPTER.validate_python(spec)


def build_model(spec: dict[str, Any] | AnySpec) -> nn.Module:
    """Build an untrained model from its spec (weights from the current torch RNG state); the model
    carries ``spec`` (a JSON-able dict) for checkpoints."""
    parsed = parse_model_spec(spec)
    if isinstance(parsed, TorchvisionSpec):
        model = build_torchvision(parsed)
    elif isinstance(parsed, FactorySpec):
        model = build_factory(parsed)
    else:
        return BUILTIN_CLASSES[parsed.name][1](parsed)
    model.spec = parsed.model_dump(mode="json")
    _check_runs(model, parsed)
    return model


@torch.no_grad()
def _check_runs(model: nn.Module, spec: TorchvisionSpec | FactorySpec) -> None:
    """A model from elsewhere must map one (C, H, W) image to (1, num_classes) logits."""
    what = f"`train_dense.model` ({spec.name if isinstance(spec, TorchvisionSpec) else spec.factory})"
    was_training = model.training
    model.eval()
    try:
        out = model(torch.zeros(1, *spec.input_shape))
    except Exception as exc:  # noqa: BLE001 - any failure means the input shape does not fit
        raise ModelSourceError(
            f"{what} does not run on one image of shape {spec.input_shape} (in_channels, input_size): {exc}. "
            "Check in_channels and input_size (data_preparation.image_size can pad or resize the data)."
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, spec.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelSourceError(
            f"{what} returned {shape} for one image; it must return logits of shape (1, num_classes = "
            f"{spec.num_classes}). Set num_classes (and the factory's kwargs) to match."
        )


__all__ = [
    "BUILTIN_CLASSES",
    "AlexNetSmallSpec",
    "FactorySpec",
    "LeNet5Spec",
    "LeNet300Spec",
    "LSTMSeqSpec",
    "ModelSpec",
    "ResNetCifarSpec",
    "StagedNet",
    "TorchvisionSpec",
    "VGGSpec",
    "build_model",
    "parse_model_spec",
]
