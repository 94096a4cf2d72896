"""An unflattened ``torch.export`` program run as compiled code, and the graph the slicer traces it through.

``torch.export.unflatten`` gives back ordinary modules with the model's paths (``conv1``, ``layer3.1``), but
by default each of them runs its graph node by node through ``torch.fx.Interpreter``: every forward pays
Python dispatch per operator, which for a small network costs as much as the arithmetic. Each unflattened
module also holds the code generated from the same graph (``graph_module``); :func:`run_compiled` switches
them to it, so a call runs the same operators without the interpreter (the root still flattens the inputs and
checks them against the program's input constraints).

The root's ``forward(*args, **kwargs)`` flattens its inputs with pytree, which ``torch.fx`` cannot trace: the
slicer (:mod:`essence.core.engine.split`) would fall back to re-running the whole model for every evaluation of the
layers above a slice. :func:`traceable_root` gives the same computation as a ``GraphModule`` over the root's
graph (one tensor in, the output in the program's own structure), sharing the submodules, so the graph can be
cut at any of them.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn
from torch.utils import _pytree as pytree

# The attribute with which an unflattened module chooses the interpreter over its generated code.
_INTERPRETER_FLAG = "_run_with_interpreter"


def is_unflattened(model: nn.Module) -> bool:
    """Whether ``model`` is the root of an unflattened ``torch.export`` program."""
    return (
        not isinstance(model, fx.GraphModule)
        and isinstance(getattr(model, "graph", None), fx.Graph)
        and bool(getattr(model, "module_call_graph", None))
    )


def run_compiled(model: nn.Module) -> int:
    """Run every unflattened module of ``model`` as its generated code rather than through the interpreter.

    The operators, their order and so the numbers are the same; only the per-operator Python dispatch goes.

    Returns:
        How many modules were switched (0 for a model that is not an unflattened program).
    """
    switched = 0
    for m in model.modules():
        compiled = isinstance(getattr(m, "graph_module", None), fx.GraphModule)
        if compiled and getattr(m, _INTERPRETER_FLAG, None) is True:
            setattr(m, _INTERPRETER_FLAG, False)
            switched += 1
    return switched


def runs_interpreted(model: nn.Module) -> list[str]:
    """Paths of the modules of ``model`` that still run their graph through ``torch.fx.Interpreter``."""
    return [name for name, m in model.named_modules() if getattr(m, _INTERPRETER_FLAG, None) is True]


def traceable_root(model: nn.Module) -> nn.Module:
    """A module ``torch.fx`` can trace that computes what ``model(x)`` does.

    For an unflattened ``torch.export`` program: a ``GraphModule`` over a copy of the root's graph, whose
    submodules are ``model``'s own (the same objects, so their paths, parameters and hooks are shared),
    taking the one flat input and returning the output in the program's structure (a tensor for a
    classifier rather than the graph's one-element tuple). Any other model is returned as it is.
    """
    if not is_unflattened(model):
        return model
    # Its graph and call graph are attributes of the unflattened program that ``nn.Module`` does not declare.
    program: Any = model
    signature = program.module_call_graph[0].signature
    graph = fx.Graph()
    flat = graph.graph_copy(program.graph, {})
    leaves = list(flat) if isinstance(flat, tuple | list) else [flat]
    out_spec = getattr(signature, "out_spec", None)
    graph.output(pytree.tree_unflatten(leaves, out_spec) if out_spec is not None else flat)
    graph.lint()
    return fx.GraphModule(model, graph)
