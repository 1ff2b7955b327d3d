"""Rewrites of a forward graph before autodiff differentiates it: the same function with the same
gradients, in a cheaper order.

- max_pool2d(relu(x)) -> relu(max_pool2d(x)) when nothing else reads the relu. relu is monotone, so
  the max of relus is the relu of the max, and the gradient reaches the same element: a patch's
  first max, or none where that max is not positive. The activation, the mask its gradient keeps
  and its backward then run on the pooled tensor (a quarter of the size for 2x2 pooling), and the
  conv output no longer needs a masked copy. Only relu: a saturating activation (sigmoid, or tanh
  in float) makes ties the unpooled values do not have, which would move gradients.
"""

from __future__ import annotations

from collections import Counter

from graphc.ir.graph import Graph
from graphc.ir.rewrite import rewrite
from graphc.passes.dce import dce


def reorder(g: Graph) -> Graph:
    uses = Counter(id(v) for n in g.nodes for v in n.inputs)
    uses.update(id(v) for v in g.outputs.values())

    def rule(b, n, args, attrs):
        x = args[0] if args else None
        if n.op == "max_pool2d" and x.producer is not None and x.producer.op == "relu" \
                and uses[id(n.inputs[0])] == 1:
            return b.op("relu", b.op("max_pool2d", x.producer.inputs[0], **attrs), name_out=n.out.name)
        return None

    out = rewrite(g, rule)
    dce(out)  # the relu the rule went around
    return out
