"""Reverse mode over a graph: the chain rule through its nodes' vjps.

Seed the cotangents of some values, walk the nodes backwards calling each op's vjp, and add up
contributions where a value fans out. It sits with the ops because a loop's vjp (ops/control.py)
differentiates its body with it; graphc.autodiff builds training steps on it.
"""

from __future__ import annotations

from graphc.ir.graph import Builder, Graph, Value
from graphc.ops.registry import REGISTRY


def backprop(g: Graph, seeds: dict[Value, Value], wrt: list[Value]) -> dict[Value, Value | None]:
    """Append to `g` the nodes computing the cotangent of each value in `wrt`, given the cotangents
    `seeds` of some of its values; None where no seed depends on it. Integer values and ops whose
    vjp is None stop the flow."""
    active = set(wrt)  # only values that depend on something in `wrt` carry cotangents
    for n in g.nodes:
        if REGISTRY[n.op].vjp is not None and any(v in active for v in n.inputs):
            active.add(n.out)
    cot = dict(seeds)
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
    return {v: cot.get(v) for v in wrt}
