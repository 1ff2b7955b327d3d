"""Constants an op reads from memory get a buffer.

A constant is a value with a shape like any other; a loop kernel reads it inline, through its
index map like a stored value (outside a slice or a padded window it reads the op's fill). A GEMM
or a view reads its operands from memory, so a constant operand there (the cotangent of a plain
`sum(x @ w)`, a tensor of ones) is first written out by a fill node: a broadcast of the scalar.
"""

from __future__ import annotations

from graphc.ir.graph import Builder, Graph, Node, TensorType, Value
from graphc.ir.rewrite import rewrite
from graphc.ops import REGISTRY
from graphc.ops.lowering import Elementwise, Reduce


def materialize(g: Graph) -> Graph:
    reads_memory = lambda n: not isinstance(REGISTRY[n.op].lowering, (Elementwise, Reduce))
    if not any(reads_memory(n) and any(v.const is not None for v in n.inputs) for n in g.nodes):
        return g  # the usual case: no graph rebuild, which would run every shape rule again

    # one fill per constant and graph (the nodes of one scan share their operands)
    fills: dict[tuple[int, float, TensorType], Value] = {}

    def fill(b: Builder, a: Value) -> Value:
        if a.const is None:
            return a
        key = (id(b.graph), a.const, a.type)
        if key not in fills:
            fills[key] = b.broadcast_to(b.const(a.const, a.dtype), shape=a.shape)
        return fills[key]

    def rule(b: Builder, n: Node, args: list[Value], attrs: dict) -> Value | None:
        if not reads_memory(n) or all(a.const is None for a in args):
            return None
        return b.op(n.op, *[fill(b, a) for a in args], name_out=n.out.name, **attrs)

    return rewrite(g, rule)
