"""Rewrites of a forward graph before autodiff differentiates it: the same function with the same
gradients, in a cheaper order.

- pool(f(x)) -> f(pool(x)) for a windowed max `pool` (Trait.WINDOW_MAX) and an order-preserving
  elementwise f (Trait.ORDER_PRESERVING: relu) when nothing else reads f(x). The max of the f's is
  f of the max, and the gradient reaches the same element: a window's first max (f makes no new
  ties), or none where f's derivative is zero there. The activation, the mask its gradient keeps
  and its backward then run on the pooled tensor (a quarter of the size for 2x2 pooling), and the
  conv output no longer needs a masked copy.
"""

from __future__ import annotations

from collections import Counter

from graphc.ir.graph import Graph
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY, Trait
from graphc.passes.dce import dce


def reorder(g: Graph) -> Graph:
    uses = Counter(id(v) for n in g.nodes for v in n.inputs)
    uses.update(id(v) for v in g.outputs.values())

    def rule(b, n, args, attrs):
        f = args[0].producer if args else None
        if Trait.WINDOW_MAX in REGISTRY[n.op].traits and f is not None \
                and Trait.ORDER_PRESERVING in REGISTRY[f.op].traits and uses[id(n.inputs[0])] == 1:
            return b.op(f.op, b.op(n.op, f.inputs[0], **attrs), name_out=n.out.name, **f.attrs)
        return None

    out = rewrite(g, rule)
    dce(out)  # the relu the rule went around
    return out
