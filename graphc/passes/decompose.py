"""Rewrites composite ops (softmax, cross-entropy, mean, ...) into the primitives codegen knows."""

from __future__ import annotations

from graphc.ir.graph import Graph
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY
from graphc.ops.lowering import Decompose


def decompose(g: Graph) -> Graph:
    def rule(b, n, args, attrs):
        lowering = REGISTRY[n.op].lowering
        return lowering.fn(b, *args, **attrs) if isinstance(lowering, Decompose) else None

    # a decomposition may emit other composite ops: repeat until none is left
    while any(isinstance(REGISTRY[n.op].lowering, Decompose) for n in g.nodes):
        g = rewrite(g, rule)
    return g
