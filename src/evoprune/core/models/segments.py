"""Cut any traceable ``nn.Module`` into consecutive segments after named modules (torch.fx).

Early exits need the backbone in pieces: segment 0 maps the input to the output of the first cut
module, segment 1 maps that to the output of the second, ..., the last one ends at the model's output.
A sample that leaves at an exit is then simply not fed to the next segment (real early exit on
batches). A cut is valid only where exactly one tensor, the cut module's output, is passed on: a
skip connection that crosses the cut (a residual block's input added after its inner conv) or a later
use of the input makes it invalid, and the error says which module and why.

The segments are ``fx.GraphModule``s that *share* the backbone's submodules (no copies): training,
``load_state_dict``, device moves and physical pruning of the backbone act on them too.
"""

from __future__ import annotations

from torch import fx, nn


class SplitError(ValueError):
    """A model cannot be cut at the requested modules."""


class _CutTracer(fx.Tracer):
    """Records the cut modules as single calls (their insides are not traced)."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, names: list[str]) -> fx.Graph:
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules or not n]
    if missing:
        top = [n for n, _ in model.named_children()]
        raise SplitError(
            f"`exit_after`: no module {missing} in {type(model).__name__}. Its top-level modules are {top}; "
            "name modules by their dotted path as model.named_modules() lists them (e.g. layer1, features.6)."
        )
    try:
        return _CutTracer(set(names)).trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure gets the same explanation
        raise SplitError(
            f"cannot place exits in {type(model).__name__}: torch.fx could not trace its forward ({exc}). "
            "Exits need a forward without data-dependent Python control flow; use no early exits "
            "(build_exits is optional) or wrap the untraceable part in a module named in `exit_after`."
        ) from exc


def split_after(model: nn.Module, names: list[str]) -> list[fx.GraphModule]:
    """``len(names) + 1`` segments: running them in turn equals ``model(x)``; segment ``i < len(names)``
    returns the output of module ``names[i]``.

    Raises:
        SplitError: a module does not exist, is not called exactly once, the names are not in the order
            the forward calls them, or another value than the module's output crosses the cut.
    """
    graph = _trace(model, names)
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    cuts = []
    for name in names:
        calls = [n for n in nodes if n.op == "call_module" and n.target == name]
        if len(calls) != 1:
            raise SplitError(
                f"`exit_after`: module '{name}' is called {len(calls)} times in {type(model).__name__}.forward; "
                "an exit needs a module that runs exactly once per forward."
            )
        cuts.append(calls[0])
    if [position[c] for c in cuts] != sorted(position[c] for c in cuts):
        order = [c.target for c in sorted(cuts, key=position.get)]
        raise SplitError(f"`exit_after` must list modules in the order the forward runs them: {order}, got {names}.")
    for cut in cuts:
        for node in nodes[: position[cut] + 1]:
            if node is cut or node.op == "get_attr":
                continue
            late = [u for u in node.users if position[u] > position[cut]]
            if late:
                what = "the model's input" if node.op == "placeholder" else f"the output of '{node.target}'"
                raise SplitError(
                    f"cannot put an exit after '{cut.target}': {what}, computed before it, is used after it "
                    f"(by '{late[0].target}', e.g. a skip connection crosses this point). Choose a module whose "
                    "output is the only value passed on, such as a whole residual stage (layer1) rather than a "
                    "layer inside a block."
                )
    bounds = [0, *[position[c] + 1 for c in cuts], len(nodes)]
    return [_segment(model, nodes, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _segment(model: nn.Module, nodes: list[fx.Node], start: int, stop: int) -> fx.GraphModule:
    """A GraphModule over ``nodes[start:stop]`` taking the value before ``start`` as its input."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    incoming = graph.placeholder("x")
    if start == 0:
        env[nodes[0]] = incoming  # the model's own placeholder
        start = 1
    else:
        env[nodes[start - 1]] = incoming

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":  # parameters/buffers read functionally: re-read them here
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    last = incoming
    for node in nodes[start:stop]:
        if node.op == "output":
            graph.node_copy(node, lookup)
            return fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Segment")
        if node.op == "placeholder":
            raise SplitError(f"{type(model).__name__}.forward takes more than one input; exits need one image input.")
        last = env[node] = graph.node_copy(node, lookup)
    graph.output(last)
    return fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Segment")
