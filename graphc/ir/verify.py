"""The verifier run between stages: SSA order, types match their op's shape rule, updates well-formed."""

from __future__ import annotations

from graphc.errors import InternalError
from graphc.ir.graph import OPS, Graph, ShapeError
from graphc.ir.printer import print_graph


def verify(g: Graph, bound: bool = False) -> None:
    """Raise InternalError, with the printed graph, where `g` breaks an invariant of the IR;
    `bound`: also where a shape is not whole numbers (what codegen's `dims` relies on)."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise InternalError(f"{g.name} fails verification: {message}", print_graph(g))

    defined = set(g.leaves())
    for n in g.nodes:
        check(n.op in OPS, f"unknown op {n.op}")
        for body in (a for a in n.attrs.values() if isinstance(a, Graph)):
            verify(body, bound)
        for v in n.inputs:
            check(v.const is not None or v in defined, f"{n.out.name}: {v.name} used before definition")
        try:
            want: object = OPS[n.op].shape([v.type for v in n.inputs], n.attrs)
        except ShapeError as e:
            want = e
        check(want == n.out.type, f"{n.out.name}: type {n.out.type} but {n.op} gives {want}")
        check(n.out not in defined, f"{n.out.name} defined twice")
        defined.add(n.out)
    if bound:
        for v in [*g.leaves(), *(n.out for n in g.nodes)]:
            check(all(isinstance(d, int) for d in v.shape), f"{v.name}: {v.type} is not bound")
    for name, v in g.outputs.items():
        check(v.const is not None or v in defined, f"output {name} is not defined")
    leaves = {p.value for p in g.params} | {s.value for s in g.state}
    for target, new in g.updates:
        check(target in leaves, f"update of {target.name}, which is not a param or state")
        check(new in defined and new.type == target.type, f"bad update {target.name} <- {new.name}")
