"""The versioned JSON form of a graph, for other languages and tools, and reading it back."""

from __future__ import annotations

import json
from typing import Any

from graphc.errors import GraphcError, Loc
from graphc.ir.graph import Builder, Graph, Input, Node, Param, TensorType, Value

FORMAT = "graphc-ir"
VERSION = 1


def _type(t: TensorType) -> dict:
    return {"dtype": t.dtype, "shape": list(t.shape)}


def _attr(v: Any) -> Any:
    if isinstance(v, Graph):  # a loop's body
        return to_json(v)
    return [_attr(e) for e in v] if isinstance(v, (tuple, list)) else v


def to_json(g: Graph) -> dict:
    def ref(v: Value) -> Any:
        return {"const": v.const, "type": _type(v.type)} if v.const is not None else v.name

    def leaf(p: Param) -> dict:
        return {"name": p.value.name, "type": _type(p.value.type), "init": p.init, "init_args": p.init_args}

    return {
        "format": FORMAT, "version": VERSION, "name": g.name, "dims": g.dims,
        "inputs": [{"name": i.value.name, "type": _type(i.value.type), "nograd": i.nograd,
                    "default": i.default} for i in g.inputs],
        "params": [leaf(p) for p in g.params],
        "state": [leaf(s) for s in g.state],
        "nodes": [{"op": n.op, "inputs": [ref(v) for v in n.inputs],
                   "attrs": {k: _attr(v) for k, v in n.attrs.items()},
                   "out": {"name": n.out.name, "type": _type(n.out.type)},
                   "loc": [n.loc.file, n.loc.line, n.loc.col] if n.loc else None,
                   "scope": n.scope,
                   "grad_of": [n.grad_of[0].out.name, n.grad_of[1]] if n.grad_of else None}
                  for n in g.nodes],
        "outputs": {k: ref(v) for k, v in g.outputs.items()},
        "loss": g.loss, "metrics": list(g.metrics),
        "updates": [[t.name, v.name] for t, v in g.updates],
    }


def dumps(g: Graph) -> str:
    return json.dumps(to_json(g), indent=1)


def from_json(d: dict) -> Graph:
    """Rebuild a graph from its JSON form; every node's shape rule runs again."""
    if d.get("format") != FORMAT or d.get("version") != VERSION:
        raise GraphcError(f"not {FORMAT} version {VERSION} JSON")

    def ttype(t: dict) -> TensorType:
        return TensorType(t["dtype"], tuple(t["shape"]))

    bodies: dict[str, Graph] = {}  # the nodes of one scan share its body

    def attr(v: Any) -> Any:
        if isinstance(v, dict):  # a loop's body
            key = json.dumps(v, sort_keys=True)
            if key not in bodies:
                bodies[key] = from_json(v)
            return bodies[key]
        return tuple(attr(e) for e in v) if isinstance(v, list) else v

    def const(a: dict) -> Value:
        t = ttype(a["type"])
        return Builder(g).const(a["const"], t.dtype, t.shape)

    g = Graph(d["name"], dims=dict(d["dims"]), loss=d["loss"], metrics=tuple(d["metrics"]))
    env: dict[str, Value] = {}

    def leaf(e: dict) -> Value:
        env[e["name"]] = Value(e["name"], ttype(e["type"]))
        return env[e["name"]]

    g.inputs = [Input(leaf(e), e["nograd"], e["default"]) for e in d["inputs"]]
    g.params = [Param(leaf(e), e["init"], e["init_args"]) for e in d["params"]]
    g.state = [Param(leaf(e), e["init"], e["init_args"]) for e in d["state"]]
    by_out: dict[str, Node] = {}
    for e in d["nodes"]:
        b = Builder(g, Loc(*e["loc"]) if e["loc"] else None, e["scope"],
                    (by_out[e["grad_of"][0]], e["grad_of"][1]) if e["grad_of"] else None)
        args = [const(a) if isinstance(a, dict) else env[a] for a in e["inputs"]]
        v = b.op(e["op"], *args, name_out=e["out"]["name"], **{k: attr(a) for k, a in e["attrs"].items()})
        env[v.name] = v
        by_out[v.name] = v.node
    g.continue_numbering()
    g.outputs = {k: const(v) if isinstance(v, dict) else env[v] for k, v in d["outputs"].items()}
    g.updates = [(env[t], env[v]) for t, v in d["updates"]]
    return g


def loads(text: str) -> Graph:
    return from_json(json.loads(text))
