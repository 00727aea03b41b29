"""Models from elsewhere: a torchvision classification constructor by name, or the user's own factory.

Both are plain ``nn.Module``s; evoprune attaches the spec that rebuilds them (``model.spec``) and
otherwise talks to them only through the adapter (``evoprune.core.models.adapter``).
- ``torchvision``: ``torchvision.models.get_model(name, weights=None, num_classes=...)``. For inputs
  other than ImageNet's, the stem is adapted: the first conv takes ``in_channels``, and on small inputs
  (``small_input``, default: the shorter side ≤ 64 px) it becomes a 3x3 stride-1 conv and a max-pool
  right after the stem (``maxpool``, as in ResNets) is dropped, the usual CIFAR adaptation.
- ``factory``: ``"package.module:function"`` called with ``kwargs``; it must return an ``nn.Module``
  that maps (B, C, H, W) images to (B, num_classes) logits.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from evoprune.core.models.base import BaseSpec


class ModelSourceError(ValueError):
    """A torchvision name or a factory that does not give a usable model."""


class TorchvisionSpec(BaseSpec):
    source: Literal["torchvision"] = "torchvision"
    name: str  # a torchvision classification constructor: resnet18, mobilenet_v2, vgg11_bn, ...
    kwargs: dict[str, Any] = Field(default_factory=dict)  # extra constructor arguments
    small_input: bool | None = None  # None: the shorter input side is <= 64 px
    logits: str | None = None  # module whose output is the logits; None: the last conv/linear to run


BUILTIN_NAMES = ("lenet5", "lenet300", "vgg", "resnet_cifar", "alexnet_small", "lstm_seq")


class FactorySpec(BaseSpec):
    source: Literal["factory"] = "factory"
    factory: str  # "package.module:function", importable from the Python path
    name: str | None = None  # a label for plots and MLflow; default: the function's name
    kwargs: dict[str, Any] = Field(default_factory=dict)
    logits: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _label(cls, data: Any) -> Any:
        """A built-in name comes from conf/base through the environments' soft merge: not a label."""
        if (
            isinstance(data, dict)
            and data.get("name") in (*BUILTIN_NAMES, None)
            and isinstance(data.get("factory"), str)
        ):
            data = {**data, "name": data["factory"].rpartition(":")[2] or None}
        return data

    @field_validator("factory")
    @classmethod
    def _module_colon_function(cls, value: str) -> str:
        module, _, function = value.partition(":")
        if not module or not function:
            raise ValueError(f"must be 'package.module:function', got '{value}'")
        return value


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def build_torchvision(spec: TorchvisionSpec) -> nn.Module:
    """A torchvision classifier with fresh weights, its stem adapted to the spec's input."""
    from torchvision import models

    known = models.list_models(module=models)
    if spec.name not in known:
        raise ModelSourceError(
            f"`train_dense.model.name`: '{spec.name}' is not a torchvision classification model. "
            f"Choose one of torchvision.models.list_models(), e.g. {[n for n in known if 'resnet' in n][:6]}."
        )
    try:
        model = models.get_model(spec.name, weights=None, num_classes=spec.num_classes, **spec.kwargs)
    except TypeError as exc:
        raise ModelSourceError(
            f"`train_dense.model.kwargs` {spec.kwargs} do not fit torchvision's {spec.name}: {exc}"
        ) from exc
    c, h, w = spec.input_shape
    small = spec.small_input if spec.small_input is not None else min(h, w) <= 64
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if small or first.in_channels != c:
        kernel, stride, padding = ((3, 3), 1, 1) if small else (first.kernel_size, first.stride, first.padding)
        _replace(model, name, nn.Conv2d(c, first.out_channels, kernel, stride, padding, bias=first.bias is not None))
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def build_factory(spec: FactorySpec) -> nn.Module:
    """The user's model from ``package.module:function(**kwargs)``."""
    module_name, _, function_name = spec.factory.partition(":")
    key = "`train_dense.model.factory`"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSourceError(
            f"{key} = '{spec.factory}': cannot import '{module_name}' ({exc}). Install your package or put "
            "its folder on PYTHONPATH."
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelSourceError(f"{key} = '{spec.factory}': '{module_name}' has no callable '{function_name}'.")
    model = function(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSourceError(
            f"{key} = '{spec.factory}' returned {type(model).__name__}, not a torch.nn.Module; the factory "
            "must return the (untrained) network."
        )
    return model
