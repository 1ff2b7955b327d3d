"""Reverse-mode autodiff of a model: the gradients of its loss, appended to the graph as IR nodes.

Seeds d(loss) = 1 and runs the chain rule over the graph (graphc.ops.backprop). Integer and
`nograd` inputs get no gradient; a value the loss does not depend on gets zeros.
"""

from __future__ import annotations

from graphc.errors import GraphcError
from graphc.ir.graph import Builder, Graph, Value
from graphc.ops.backprop import backprop


def grad(g: Graph, wrt: list[Value]) -> dict[Value, Value]:
    """Append nodes computing d(g.outputs[g.loss]) / d(v) for each v in `wrt`; return them."""
    loss = g.loss_value()
    if loss.type.shape != ():
        raise GraphcError(f"the differentiated output '{g.loss}' must be a scalar, got {loss.type}")
    out = {}
    for v, d in backprop(g, {loss: Builder(g).const(1.0, loss.dtype)}, wrt).items():
        d = d or Builder(g).broadcast_to(Builder(g).const(0.0, v.dtype), shape=v.shape)
        if d.name.startswith("%") and d.producer is not None:
            d.name = f"d.{v.name}"
        out[v] = d
    return out
