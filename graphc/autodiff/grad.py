"""Reverse-mode autodiff: appends the backward pass to a graph as IR nodes.

Seed d(loss) = 1, walk the nodes backwards, call each op's vjp, and add up contributions where a
value fans out. Integer and `nograd` inputs get no gradient; an op whose vjp is None stops the flow.
"""

from __future__ import annotations

from graphc.errors import GraphcError
from graphc.ir.graph import Builder, Graph, Value
from graphc.ops import REGISTRY


def grad(g: Graph, wrt: list[Value]) -> dict[Value, Value]:
    """Append nodes computing d(g.outputs[g.loss]) / d(v) for each v in `wrt`; return them."""
    loss = g.loss_value()
    if loss.type.shape != ():
        raise GraphcError(f"the differentiated output '{g.loss}' must be a scalar, got {loss.type}")
    # only values that depend on something in `wrt` carry gradients
    active = set(wrt)
    for n in g.nodes:
        if REGISTRY[n.op].vjp is not None and any(v in active for v in n.inputs):
            active.add(n.out)
    cot: dict[Value, Value] = {loss: Builder(g).const(1.0, loss.dtype)}
    for n in reversed(list(g.nodes)):
        gout = cot.get(n.out)
        if gout is None or n.out not in active:
            continue
        vjp = REGISTRY[n.op].vjp
        assert vjp is not None  # an op without one makes nothing active
        b = Builder(g, n.loc, n.scope, grad_of=(n, -1))
        first = len(g.nodes)
        contribs = vjp(b, n, gout)
        emitted = set(g.nodes[first:])  # this vjp's nodes
        for i, (v, c) in enumerate(zip(n.inputs, contribs)):
            if c is None or v not in active:
                continue
            if c.producer in emitted:
                c.producer.grad_of = (n, i)
            cot[v] = b.add(cot[v], c) if v in cot else c
    out = {}
    for v in wrt:
        d = cot.get(v) or Builder(g).broadcast_to(Builder(g).const(0.0, v.dtype), shape=v.shape)
        if d.name.startswith("%") and d.producer is not None:
            d.name = f"d.{v.name}"
        out[v] = d
    return out
