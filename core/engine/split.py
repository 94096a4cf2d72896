"""Split a network at a slice into h (below) and g (above), so that g(z) runs without re-running h.

Expert sweeps evaluate the layers above a slice on many masked copies of the same z. With the graph cut at
the slice (``torch.fx``), each mask costs one pass through g only. Where the model does not trace, or the
part above the slice needs more than z (a skip connection that crosses the slice), g falls back to running
the whole model with z substituted at the layer by a forward hook: correct, but it re-runs h every time.
An unflattened ``torch.export`` program is traced through its own graph
(:func:`~essence.core.inputs.pt2_code.traceable_root`), so it is cut like any module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn

from essence.core.base.errors import LayerNotFoundError
from essence.core.engine.slices import capture, is_input_layer, resolve_layer
from essence.core.inputs.pt2_code import traceable_root

Route = Literal["fx", "hook"]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the slice is reached (h alone on the hook route)."""


@dataclass(frozen=True)
class SlicedModel:
    """A model cut at a slice: ``model(x) == g(h(x))``.

    Attributes:
        layer: module path of the slice.
        route: ``"fx"`` (the graph was cut: g runs only the layers above) or ``"hook"`` (g re-runs the
            whole model with z substituted at the layer; h stops the forward at the layer).
        reason: why the hook route was taken (empty for ``"fx"``).
    """

    model: nn.Module = field(repr=False)
    layer: str
    route: Route
    reason: str = ""
    _h: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    _g: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """z = h(x): the slice's output ``[B, *z_shape]`` for inputs ``[B, ...]``."""
        if self._h is not None:
            return self._h(x)
        return _h_by_hook(self.model, self.layer, x)

    @property
    def needs_input(self) -> bool:
        """Whether :meth:`g` needs the inputs x too (the hook route re-runs the model on them)."""
        return self._g is None

    def g(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The model's outputs ``[B, K]`` with z ``[B, *z_shape]`` at the slice.

        Args:
            z: the slice's values (never modified: an in-place op above the slice works on a copy).
            x: the inputs ``[B, ...]`` z came from. Ignored on the fx route; required on the hook route,
                which re-runs the layers below the slice on them (anything that crosses the slice, such as
                a skip connection, then takes its value from the real input).

        Raises:
            LayerNotFoundError: hook route without ``x``.
        """
        z = z.clone()
        if self._g is not None:
            return self._g(z)
        if x is None:
            raise LayerNotFoundError(
                f"the model cannot be cut at {self.layer!r} ({self.reason}); g re-runs it and needs the inputs x"
            )
        with capture(self.model, self.layer, substitute=z):
            out: torch.Tensor = self.model(x)
        return out


def _h_by_hook(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    module = resolve_layer(model, layer)
    out: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: tuple[object, ...], output: torch.Tensor) -> None:
        out.append(output)
        raise _StopForward

    if module is None:
        raise LayerNotFoundError("the input slice has no layers below it: z is the input itself")
    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not out:
        raise LayerNotFoundError(
            f"layer {layer!r} was not reached in the forward pass: pick a layer the model uses"
        )
    return out[0]


class _SliceTracer(fx.Tracer):
    """Keeps the sliced module a leaf, so the cut falls exactly on its output even for a custom module."""

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        self._target = target

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return m is self._target or super().is_leaf_module(m, qualname)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    """Every node ``node`` is computed from (not including itself)."""
    seen: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _depends_on(node: fx.Node, sources: set[fx.Node], memo: dict[fx.Node, bool]) -> bool:
    """Whether ``node`` is computed from any of ``sources`` (iterative DFS over its inputs)."""
    stack = [node]
    order: list[fx.Node] = []
    while stack:
        n = stack.pop()
        if n in memo:
            continue
        order.append(n)
        stack.extend(i for i in n.all_input_nodes if i not in memo)
    for n in reversed(order):
        if n not in memo:
            memo[n] = n in sources or any(memo.get(i, False) for i in n.all_input_nodes)
    return memo[node]


def _cut(model: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Trace ``model`` and cut its graph at ``layer``: ``(h, g)`` graph modules.

    Raises:
        ValueError: the graph cannot be cut there (reason in the message).
    """
    target = resolve_layer(model, layer)
    if target is None:  # split_model answers the input slice before cutting anything
        raise ValueError("the input slice has no layers below it to cut")
    tracer = _SliceTracer(target)
    # An unflattened torch.export program is traced through its own graph (its forward flattens its inputs
    # with pytree, which fx cannot trace); the submodules are the model's own either way.
    traced = traceable_root(model)
    graph = tracer.trace(traced)
    root = fx.GraphModule(traced, graph)
    nodes = list(root.graph.nodes)
    at = [n for n in nodes if n.op == "call_module" and n.target == layer]
    if len(at) != 1:
        raise ValueError(f"the traced graph calls {layer!r} {len(at)} times (need exactly once)")
    cut = at[0]
    inputs = {n for n in nodes if n.op == "placeholder"}
    output = next(n for n in nodes if n.op == "output")
    if len(inputs) != 1:
        raise ValueError(f"the model takes {len(inputs)} inputs (need one)")
    memo_x: dict[fx.Node, bool] = {}
    memo_z: dict[fx.Node, bool] = {}
    above = [n for n in nodes if n is not cut and _depends_on(n, {cut}, memo_z)]
    if output not in above:
        raise ValueError("the output does not depend on the slice")
    above_set = set(above)
    # g may use z, nodes computed from z, and constants; anything else computed from x crosses the slice.
    extra: list[fx.Node] = []
    for n in above:
        for i in n.all_input_nodes:
            if i is cut or i in above_set:
                continue
            if _depends_on(i, inputs, memo_x):
                raise ValueError(
                    f"node {i.name!r} computed below the slice feeds {n.name!r} above it (a skip connection "
                    "across the slice)"
                )
            extra.append(i)

    g_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {cut: g_graph.placeholder("z")}
    constants: set[fx.Node] = set(extra)
    for e in extra:
        constants |= _ancestors(e)
    for n in nodes:
        if n in constants:
            env[n] = g_graph.node_copy(n, lambda a: env[a])
    for n in above:
        env[n] = g_graph.node_copy(n, lambda a: env[a])
    g_graph.lint()

    h_graph = fx.Graph()
    h_env: dict[fx.Node, fx.Node] = {}
    below = _ancestors(cut) | {cut}
    for n in nodes:
        if n in below:
            h_env[n] = h_graph.node_copy(n, lambda a: h_env[a])
    h_graph.output(h_env[cut])
    h_graph.lint()
    return fx.GraphModule(root, h_graph), fx.GraphModule(root, g_graph)


def split_model(model: nn.Module, layer: str, example: torch.Tensor | None = None) -> SlicedModel:
    """Cut ``model`` at ``layer`` into ``h(x) -> z`` and ``g(z) -> outputs``.

    The fx route is taken when the model traces symbolically and everything above the slice is computed
    from z alone (and constants). With ``example`` inputs, the cut is also checked numerically
    (``g(h(x)) == model(x)`` within float tolerance, in eval mode) and abandoned if it disagrees. Otherwise
    the hook route: ``g`` re-runs the model with z substituted at the layer.

    Args:
        model: the classifier (its mode is left as it is; use eval mode for analyses).
        layer: module path of the slice.
        example: optional inputs ``[B, ...]`` to check the cut on.

    Returns:
        A :class:`SlicedModel` whose ``route`` says which way was taken and ``reason`` why.

    Raises:
        LayerNotFoundError: unknown layer, or the input slice (which has no layers below it).
    """
    if is_input_layer(layer):
        raise LayerNotFoundError("the input slice has nothing below it to split off: pick a layer")
    resolve_layer(model, layer)
    try:
        h, g = _cut(model, layer)
    except Exception as exc:  # any tracing failure (control flow on values, unsupported ops) → hook route
        return SlicedModel(model, layer, "hook", reason=f"{type(exc).__name__}: {exc}".splitlines()[0])
    sliced = SlicedModel(model, layer, "fx", _h=h, _g=g)
    if example is not None:
        ok, why = _agrees(model, sliced, example)
        if not ok:
            return SlicedModel(model, layer, "hook", reason=why)
    return sliced


def _agrees(model: nn.Module, sliced: SlicedModel, x: torch.Tensor) -> tuple[bool, str]:
    try:
        with torch.no_grad():
            want = model(x)
            got = sliced.g(sliced.h(x))
    except Exception as exc:
        return False, f"the cut graph failed on the example: {type(exc).__name__}: {exc}"
    if got.shape != want.shape or not torch.allclose(got.float(), want.float(), rtol=1e-4, atol=1e-5):
        return False, "the cut graph disagrees with the model on the example inputs"
    return True, ""
