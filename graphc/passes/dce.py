"""Dead-code elimination: drops nodes whose values reach no output and no update."""

from __future__ import annotations

from graphc.ir.graph import Graph


def dce(g: Graph) -> Graph:
    live = {id(v) for v in g.outputs.values()} | {id(v) for _, v in g.updates}
    keep = []
    for n in reversed(g.nodes):
        if id(n.out) in live:
            keep.append(n)
            live.update(id(v) for v in n.inputs)
    g.nodes = keep[::-1]
    return g
