"""The verifier run between stages: SSA order, types match their op's shape rule, updates well-formed."""

from __future__ import annotations

from graphc.ir.graph import OPS, Graph


def verify(g: Graph) -> None:
    defined = set(g.leaves())
    for n in g.nodes:
        assert n.op in OPS, f"unknown op {n.op}"
        for v in n.inputs:
            assert v.const is not None or v in defined, f"{n.out.name}: {v.name} used before definition"
        want = OPS[n.op].shape([v.type for v in n.inputs], n.attrs)
        assert want == n.out.type, f"{n.out.name}: type {n.out.type} but {n.op} gives {want}"
        assert n.out not in defined, f"{n.out.name} defined twice"
        defined.add(n.out)
    for name, v in g.outputs.items():
        assert v.const is not None or v in defined, f"output {name} is not defined"
    leaves = {p.value for p in g.params} | {s.value for s in g.state}
    for target, new in g.updates:
        assert target in leaves, f"update of {target.name}, which is not a param or state"
        assert new in defined and new.type == target.type, f"bad update {target.name} <- {new.name}"
