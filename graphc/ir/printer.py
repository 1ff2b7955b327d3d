"""The deterministic, jaxpr-like text form of a graph: one typed value per line.

The text carries everything the graph means (leaf initializers, nograd flags, input defaults, bound
dims, which output is the loss and which are metrics), so graphc.ir.parse_text reads it back; of a
node's source position it keeps the file name and line. A loop's body graph (a scan's) is printed
after the graph that runs it, named where it is used (`body=@rnn.cell`).
"""

from __future__ import annotations

from typing import Any

from graphc.ir.graph import OPS, Graph, Input, Node, Param, Value


def fmt_attr(v: Any) -> str:
    if isinstance(v, Graph):  # a loop's body, printed after the graph that runs it
        return f"@{v.name}"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(fmt_attr(e) for e in v) + "]"
    return str(v)


def ref(v: Value) -> str:
    """A use of a value; a non-scalar literal carries its type (a scalar one takes its operands')."""
    return f"{v.ref()}:{v.type}" if v.const is not None and v.shape else v.ref()


def shown_attrs(n: Node) -> list[str]:
    """`name=value` for each attribute that differs from its op's default, by name."""
    defaults = OPS[n.op].defaults
    return [f"{k}={fmt_attr(v)}" for k, v in sorted(n.attrs.items())
            if k not in defaults or defaults[k] != v]


def node_line(n: Node) -> str:
    attrs = shown_attrs(n)
    rhs = f"{n.op} " + ", ".join(ref(v) for v in n.inputs)
    if attrs:
        rhs += " [" + ", ".join(attrs) + "]"
    line = f"  {n.out.name}: {n.out.type} = {rhs}"
    where = []
    if n.loc:
        where.append(f"@{n.loc.file.rsplit('/', 1)[-1]}:{n.loc.line}")
    if n.scope:
        where.append(n.scope)
    if n.grad_of:
        fwd, i = n.grad_of
        where.append(f"<- vjp {fwd.out.name}" + (f" arg{i}" if i >= 0 else ""))
    return f"{line:<60} {' '.join(where)}".rstrip()


def _input(i: Input) -> str:
    return (f"{i.value.name}: {i.value.type}" + (" nograd" if i.nograd else "")
            + (f" = {i.default!r}" if i.default is not None else ""))


def _param(p: Param) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in p.init_args.items())
    return f"{p.value.name}: {p.value.type} = {p.init}({args})"


def kind(n: Node) -> str:
    """Which part of a training step a node is in: forward, backward (a vjp's) or update."""
    return "update" if n.scope == "update" else "backward" if n.grad_of else "forward"


def print_graph(g: Graph) -> str:
    sig = ", ".join(map(_input, g.inputs))
    if g.params:
        sig += "; " + ", ".join(map(_param, g.params))
    if g.state:
        sig += "; state " + ", ".join(map(_param, g.state))
    role = lambda k: " loss" if k == g.loss else " metric" if k in g.metrics else ""
    outs = ", ".join(f"{k}: {v.type}{role(k)}" for k, v in g.outputs.items())
    dims = "[" + ", ".join(f"{k}={v}" for k, v in g.dims.items()) + "]" if g.dims else ""
    lines = [f"graph {g.name}{dims}({sig}) -> ({outs}) {{"]
    section = "forward"
    for n in g.nodes:
        if kind(n) != section:
            section = kind(n)
            lines.append(f"  # {section}")
        lines.append(node_line(n))
    for k, v in g.outputs.items():
        lines.append(f"  {k} = {ref(v)}" if k != v.name else f"  {k}")
    for t, v in g.updates:
        lines.append(f"  {t.name} <- {ref(v)}")
    lines.append("}")
    bodies = {id(a): a for n in g.nodes for a in n.attrs.values() if isinstance(a, Graph)}
    return "\n".join(lines + [print_graph(body) for body in bodies.values()])
