"""The deterministic, jaxpr-like text form of a graph: one typed value per line."""

from __future__ import annotations

from typing import Any

from graphc.ir.graph import Graph, Node
from graphc.ops import REGISTRY


def fmt_attr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(fmt_attr(e) for e in v) + "]"
    return str(v)


def node_line(n: Node) -> str:
    defaults = REGISTRY[n.op].defaults
    attrs = {k: v for k, v in n.attrs.items() if k not in defaults or defaults[k] != v}
    rhs = f"{n.op} " + ", ".join(v.ref() for v in n.inputs)
    if attrs:
        rhs += " [" + ", ".join(f"{k}={fmt_attr(v)}" for k, v in sorted(attrs.items())) + "]"
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


def print_graph(g: Graph) -> str:
    leaves = lambda xs: ", ".join(f"{x.value.name}: {x.value.type}" for x in xs)
    sig = leaves(g.inputs)
    if g.params:
        sig += "; " + leaves(g.params)
    if g.state:
        sig += "; state " + leaves(g.state)
    outs = ", ".join(f"{k}: {v.type}" for k, v in g.outputs.items())
    lines = [f"graph {g.name}({sig}) -> ({outs}) {{"]
    section = "forward"
    for n in g.nodes:
        kind = "update" if n.scope == "update" else "backward" if n.grad_of else "forward"
        if kind != section:
            lines.append(f"  # {kind}")
            section = kind
        lines.append(node_line(n))
    for k, v in g.outputs.items():
        lines.append(f"  {k} = {v.ref()}" if k != v.name else f"  {k}")
    for t, v in g.updates:
        lines.append(f"  {t.name} <- {v.ref()}")
    lines.append("}")
    return "\n".join(lines)
