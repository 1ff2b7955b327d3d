"""Rebuilds a graph node by node through the Builder, letting a rule replace nodes on the way.

Binding dims, decomposing composite ops and simplifying are all this one walk with a different rule;
every rebuilt node runs its shape rule again. A node's body graph (a scan's) is rewritten by the
same walk, once however many nodes share it. `inline` copies a graph's nodes into another.
"""

from __future__ import annotations

from typing import Any, Callable

from graphc.ir.graph import Builder, Graph, Input, Node, Param, TensorType, Value

# rule(builder, node, new_inputs, attrs) -> replacement value, or None to copy the node as it is
Rule = Callable[[Builder, Node, list[Value], dict], "Value | None"]


def rewrite(g: Graph, rule: Rule | None = None,
            leaf_type: Callable[[TensorType], TensorType] = lambda t: t,
            attr_map: Callable[[Any], Any] = lambda a: a, name: str | None = None) -> Graph:
    bodies: dict[int, Graph] = {}

    def body(a: Any) -> Any:
        if isinstance(a, Graph):
            if id(a) not in bodies:
                bodies[id(a)] = rewrite(a, rule, leaf_type, attr_map)
            return bodies[id(a)]
        return a

    out = Graph(name or g.name, metrics=g.metrics, loss=g.loss, dims=dict(g.dims))
    out._count = g._count
    env: dict[Value, Value] = {}

    def leaf(v: Value) -> Value:
        env[v] = Value(v.name, leaf_type(v.type))
        return env[v]

    out.inputs = [Input(leaf(i.value), i.nograd, i.default, i.loc) for i in g.inputs]
    out.params = [Param(leaf(p.value), p.init, dict(p.init_args), p.loc) for p in g.params]
    out.state = [Param(leaf(s.value), s.init, dict(s.init_args), s.loc) for s in g.state]
    nodes: dict[Node, Node] = {}
    for n in g.nodes:
        args = [env.get(v) or _const(out, v, leaf_type) for v in n.inputs]
        grad_of = (nodes[n.grad_of[0]], n.grad_of[1]) if n.grad_of and n.grad_of[0] in nodes else None
        b = Builder(out, n.loc, n.scope, grad_of)
        attrs = {k: body(a) for k, a in attr_map(n.attrs).items()}
        new = rule(b, n, args, attrs) if rule else None
        if new is None:
            new = b.op(n.op, *args, name_out=n.out.name, **attrs)
            nodes[n] = new.node
        env[n.out] = new
    out.outputs = {k: env.get(v) or _const(out, v, leaf_type) for k, v in g.outputs.items()}
    out.updates = [(env[t], env[v]) for t, v in g.updates]
    return out


def _const(g: Graph, v: Value, leaf_type: Callable[[TensorType], TensorType]) -> Value:
    t = leaf_type(v.type)
    assert v.const is not None, v.name  # a value outside the graph's nodes and leaves is a literal
    return Builder(g).const(v.const, t.dtype, t.shape)


def inline(b: Builder, g: Graph, args: list[Value]) -> dict[Value, Value]:
    """Copy `g`'s nodes into `b`'s graph with its leaves (inputs, params, state, in order) replaced
    by `args`; return each value of `g` -> its copy (a literal is its own)."""
    env: dict[Value, Value] = dict(zip(g.leaves(), args))

    def at(v: Value) -> Value:
        return b.const(v.const, v.dtype, v.shape) if v.const is not None else env[v]

    for n in g.nodes:
        env[n.out] = b.op(n.op, *[at(v) for v in n.inputs], **n.attrs)
    return env
