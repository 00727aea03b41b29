"""The model adapter: what every stage needs from a network, for any ``nn.Module``.

- ``input_shape(model)``: one sample's shape (C, H, W), from the spec the model carries;
- ``logit_layers(model)``: the layers whose outputs are logits (one per exit; never pruned);
- ``exit_logits(model, x)``: the logits of every exit as a list (a plain classifier has one exit);
- ``load_weights(model, state_dict, origin)``: a state_dict checked against the model, with an error
  that lists missing, unexpected and mis-shaped keys; ``rebuild_checked`` checks a checkpoint's spec against
  its weights on the meta device before allocating anything;
- ``evoprune.core.exits.build_network(spec)`` rebuilds any network (plain or multi-exit) from its spec.
Built-in models carry their spec; torchvision and factory models get it from ``build_model``.
Stages use these functions and never reach into a model's attributes (``backbone.stages`` etc.).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evoprune.core.models.base import image_shape


class CheckpointMismatchError(ValueError):
    """A state_dict does not belong to the model it is loaded into."""


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The spec dict a model carries (a multi-exit network's own spec)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise TypeError(
            f"{type(model).__name__} carries no `spec`; build it with evoprune.core.models.build_model "
            "(train_dense.model: builtin, torchvision or factory) so that it can be rebuilt from a checkpoint."
        )
    return spec


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """One sample's shape (C, H, W) for a backbone or a multi-exit network."""
    spec = model_spec(model)
    spec = spec.get("backbone", spec) if spec.get("name") == "multi_exit" else spec
    return image_shape(spec["in_channels"], spec["input_size"])


def exit_logits(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The logits of every exit, final exit last: E x (B, num_classes)."""
    out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


@torch.no_grad()
def _last_layer_to_run(model: nn.Module) -> nn.Module:
    """The last conv/linear layer a forward calls (the logits of a classifier come from it)."""
    called: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: called.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape(model), device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not called:
        raise ValueError(f"{type(model).__name__} calls no conv or linear layer; there is nothing to prune.")
    return called[-1]


def logit_layer(backbone: nn.Module) -> nn.Module:
    """The layer whose output is the backbone's logits: ``spec.logits`` when set, else the last
    conv/linear its forward runs."""
    name = model_spec(backbone).get("logits")
    if name:
        modules = dict(backbone.named_modules())
        if name not in modules:
            raise ValueError(f"`train_dense.model.logits`: no module '{name}' in {type(backbone).__name__}.")
        return modules[name]
    return _last_layer_to_run(backbone)


def logit_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose outputs are logits, one per exit (the final exit's first for multi-exit nets)."""
    if hasattr(model, "exit_heads"):
        heads = [[m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1] for head in model.exit_heads]
        return [logit_layer(model.backbone), *heads]
    return [logit_layer(model)]


def check_weights_fit(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """``state_dict`` with a ``module.`` prefix (DataParallel / DDP checkpoints) stripped, after checking that
    its keys and shapes are exactly ``model``'s; a mismatch names what differs and where it came from.
    ``model`` may live on the meta device (only shapes are read)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(missing)} missing keys (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})" if unexpected else "",
            f"{len(shapes)} shapes differ (checkpoint vs model, e.g. {shapes[:3]})" if shapes else "",
        ]
        raise CheckpointMismatchError(
            f"{origin} does not fit the model {model_spec(model).get('name')}: "
            + "; ".join(p for p in parts if p)
            + ". Use the checkpoint of this architecture, or set train_dense.model to the one it was trained with."
        )
    return state_dict


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly (see ``check_weights_fit``)."""
    model.load_state_dict(check_weights_fit(model, state_dict, origin), strict=True)
    return model


def rebuild_checked(
    build: Callable[[dict[str, Any]], nn.Module], spec: dict[str, Any], state_dict: dict[str, torch.Tensor], origin: str
) -> nn.Module:
    """``build(spec)`` with ``state_dict`` loaded, without trusting ``spec``: the architecture is built on the
    meta device first (no memory) and its keys and shapes checked against the checkpoint's tensors, so a
    crafted spec cannot make the loader allocate more than the checkpoint itself holds."""
    with torch.device("meta"):
        skeleton = build(spec)
    check_weights_fit(skeleton, state_dict, origin)
    return load_weights(build(spec), state_dict, origin)


def read_state_dict(path: str | Path, key: str = "train_dense.checkpoint.path") -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file, read with ``weights_only=True``: a plain state_dict, an evoprune
    model checkpoint (``{"format", "spec", "state_dict"}``) or a dict holding one under ``state_dict`` /
    ``model``. ``key`` names the setting in errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`{key}`: no checkpoint file {path}. Point it at a torch.save'd state_dict.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and unsafe-global errors all mean "not loadable"
        raise CheckpointMismatchError(
            f"`{key}`: {path} is not a weights-only torch checkpoint ({exc}). Save it with "
            "torch.save(model.state_dict(), path); files that need pickled code are refused."
        ) from exc
    for inner in ("state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(inner), dict):
            payload = payload[inner]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointMismatchError(f"`{key}`: {path} holds no state_dict (a dict of tensors).")
    return payload
