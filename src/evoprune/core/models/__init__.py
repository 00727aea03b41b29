"""CNN backbones built by name from a typed spec.

Every model is a ``StagedNet``: a sequence of ``stages`` (feature extractors; exits can be attached
after any of them) followed by a ``head`` (the classifier, the last exit). Its ``spec`` is a plain
dict that rebuilds the architecture: checkpoints store ``spec`` + ``state_dict`` and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from evoprune.core.models.base import StagedNet
from evoprune.core.models.lenet5 import LeNet5, LeNet5Spec
from evoprune.core.models.vgg import VGGNet, VGGSpec

ModelSpec = Annotated[LeNet5Spec | VGGSpec, Field(discriminator="name")]
_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelSpec)
MODEL_CLASSES: dict[str, type[StagedNet]] = {"lenet5": LeNet5, "vgg": VGGNet}


def parse_model_spec(spec: dict[str, Any] | LeNet5Spec | VGGSpec) -> LeNet5Spec | VGGSpec:
    """Validate a spec dict (e.g. from a checkpoint); unknown names list the known ones."""
    if isinstance(spec, (LeNet5Spec, VGGSpec)):
        return spec
    return _SPEC_ADAPTER.validate_python(spec)


def build_model(spec: dict[str, Any] | LeNet5Spec | VGGSpec) -> StagedNet:
    """Build an untrained model from its spec (weights from the current torch RNG state)."""
    parsed = parse_model_spec(spec)
    return MODEL_CLASSES[parsed.name](parsed)


__all__ = ["MODEL_CLASSES", "LeNet5Spec", "ModelSpec", "StagedNet", "VGGSpec", "build_model", "parse_model_spec"]
