"""Builds whole-step graphs from a forward graph: the training step and the gradient graph."""

from __future__ import annotations

from graphc.autodiff.grad import grad
from graphc.autodiff.optim import emit_optimizer
from graphc.ir.graph import Graph, Input, TensorType, Value


def training_graph(fwd: Graph, optimizer: str, args: dict[str, float]) -> Graph:
    """Forward + backward + optimizer update, one graph. `fwd` must be bound (concrete dims)."""
    g = _copy(fwd, "step")
    dtype = g.outputs[g.loss].dtype
    lr = Value("lr", TensorType(dtype, ()))
    g.inputs.append(Input(lr, nograd=True))
    params = [p.value for p in g.params]
    grads = grad(g, params)
    emit_optimizer(g, [(p, grads[p]) for p in params], optimizer, args, lr)
    return g


def gradient_graph(fwd: Graph) -> Graph:
    """Forward + backward with every gradient as an output `d.NAME` (float inputs and params)."""
    g = _copy(fwd, "grad")
    wrt = [i.value for i in g.inputs if not i.nograd and i.value.type.is_float]
    wrt += [p.value for p in g.params]
    for v, d in grad(g, wrt).items():
        g.outputs[f"d.{v.name}"] = d
    return g


def _copy(fwd: Graph, suffix: str) -> Graph:
    from graphc.ir.bind import bind
    g = bind(fwd, {})
    g.name = f"{fwd.name}.{suffix}"
    return g
