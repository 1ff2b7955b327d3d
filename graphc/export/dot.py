"""Draws a graph as Graphviz DOT text, and renders it to SVG/PNG with the `dot` program when installed.

Layers are clusters (a node's scope, e.g. fc1, with the layer's params); forward, backward (vjp)
and optimizer-update nodes are styled apart; inputs, params and optimizer state are distinguished;
every edge carries the shape of the value it moves. Literal operands are folded into their node's
label, and an update writes into a sink node named after its param, so the drawing stays acyclic.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path

from graphc.errors import GraphcError
from graphc.ir.graph import Graph, Node, Value
from graphc.ir.printer import kind, shown_attrs

FORMATS = ("dot", "svg", "png", "pdf")

# fill, border and font colour per kind of box: light fills so black labels stay readable
STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#cfe2f3", color="#3d85c6"',
    "param": 'shape=box, style="filled", fillcolor="#fff2cc", color="#bf9000"',
    "state": 'shape=box, style="filled,dashed", fillcolor="#fff2cc", color="#bf9000"',
    "forward": 'shape=box, style="rounded,filled", fillcolor="#ffffff", color="#444444"',
    "backward": 'shape=box, style="rounded,filled", fillcolor="#f4cccc", color="#cc0000"',
    "update": 'shape=box, style="rounded,filled", fillcolor="#d9ead3", color="#38761d"',
    "output": 'shape=box, style="bold,filled", fillcolor="#eeeeee", color="#000000"',
    "written": 'shape=box, style="filled,bold", fillcolor="#d9ead3", color="#38761d"',
}
EDGE = {"forward": "#444444", "backward": "#cc0000", "update": "#38761d"}
LEGEND = {"input": "input", "param": "param", "state": "state (optimizer, running stats)",
          "forward": "forward op", "backward": "backward op (vjp)", "update": "update op"}


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(v: Value) -> str:
    return "×".join(map(str, v.shape)) if v.shape else "scalar"


def _label(n: Node) -> str:
    """The op, its literal operands in place (`sub 1, ·` is 1 - x), its non-default attributes,
    and the value's name unless it is %N."""
    extra = shown_attrs(n)
    if any(v.const is not None for v in n.inputs):
        extra.insert(0, ", ".join("·" if v.const is None else f"{v.const:g}" for v in n.inputs))
    lines = [n.op + (" " + " ".join(extra) if extra else "")]
    if not n.out.name.startswith("%"):
        lines.append(n.out.name)
    return "\n".join(lines)


def _layer_of(name: str, layers: set[str]) -> str | None:
    """The layer a param or state buffer belongs to: the longest scope its name starts with
    (fc1.W -> fc1, fc1.W.velocity -> fc1)."""
    owners = [s for s in layers if name.startswith(s + ".")]
    return max(owners, key=len) if owners else None


def _parent(title: str, titles: dict[str, list[str]]) -> str | None:
    """The cluster a nested layer's cluster sits in: fc1.bn in fc1, fc1.bn (backward) in fc1 (backward)."""
    scope, space, kind_part = title.partition(" ")
    while "." in scope:
        scope = scope.rsplit(".", 1)[0]
        if scope + space + kind_part in titles:
            return scope + space + kind_part
    return None


def to_dot(g: Graph) -> str:
    """DOT text for `g`. Forward flows left to right; the gradient flows back right to left below
    it (backward edges are drawn reversed, and the activations they read do not pull them along),
    so each layer's backward cluster sits under its forward one, and its update cluster below."""
    ids: dict[int, str] = {}
    clusters: dict[str, list[str]] = {}  # cluster title -> node statements
    loose: list[str] = []
    edges: list[str] = []
    leaves = {id(i.value): "input" for i in g.inputs} | {id(p.value): "param" for p in g.params} \
        | {id(s.value): "state" for s in g.state}
    layers = {n.scope for n in g.nodes if n.scope and n.scope != "update"}
    update_layer: dict[int, str | None] = {}  # update node outputs -> the layer whose buffers they update
    styles: set[str] = set()  # what the legend explains
    count = itertools.count()

    def box(style: str, label: str, cluster: str | None) -> str:
        styles.add(style)
        name = f"n{next(count)}"
        stmt = f"{name} [label={_q(label)}, {STYLE[style]}];"
        (clusters.setdefault(cluster, []) if cluster else loose).append(stmt)
        return name

    def source(v: Value, cluster: str | None) -> str:
        # a leaf gets a box at each use, in the user's cluster: no edges across the picture
        return box(leaves[id(v)], v.name, cluster) if id(v) in leaves else ids[id(v)]

    def cluster(n: Node, k: str) -> str | None:
        if k == "forward":
            return n.scope or None
        if k == "backward":
            return f"{n.scope} (backward)" if n.scope else None
        # an update node belongs to the layer of the buffers, gradients or updates it reads
        owners = [update_layer.get(id(v)) if id(v) in update_layer
                  else _layer_of(v.name, layers) if leaves.get(id(v)) in ("param", "state")
                  else v.producer.scope if v.producer and v.producer.grad_of else None for v in n.inputs]
        owner = update_layer[id(n.out)] = next((o for o in owners if o), None)
        return f"{owner} (update)" if owner else "optimizer update"

    for n in g.nodes:
        k = kind(n)
        title = cluster(n, k)
        operands = [v for v in n.inputs if v.const is None]
        # model inputs stay outside forward layers, which they feed but do not belong to
        srcs = [source(v, None if k == "forward" and leaves.get(id(v)) == "input" else title)
                for v in operands]
        ids[id(n.out)] = dst = box(k, _label(n), title)
        for src, v in zip(srcs, operands):
            from_kind = kind(v.producer) if v.producer else "leaf"
            attrs = f"label={_q(_shape(v))}, color=\"{EDGE[k]}\""
            if k == "backward" and from_kind == "backward":
                edges.append(f"{dst} -> {src} [{attrs}, dir=back];")
            else:
                saved = k != "forward" and from_kind == "forward"  # an activation kept for backward
                edges.append(f"{src} -> {dst} [{attrs}{', constraint=false' if saved else ''}];")
    sinks = [(name, v, "output") for name, v in g.outputs.items()]
    sinks += [(f"{t.name} ←", v, "written") for t, v in g.updates]
    for label, v, style in sinks:
        if v.const is None:
            edges.append(f"{source(v, None)} -> {box(style, label, None)} [label={_q(_shape(v))}];")

    lines = [f"digraph {_q(g.name)} {{",
             "  rankdir=LR; nodesep=0.25; ranksep=0.35; newrank=true;",
             '  node [fontname="Helvetica", fontsize=11, margin="0.1,0.04", height=0.3];',
             '  edge [fontname="Helvetica", fontsize=9, fontcolor="#555555", arrowsize=0.6];']
    used = [k for k in LEGEND if k in styles]
    clusters["legend"] = [f"legend{i} [label={_q(LEGEND[k])}, {STYLE[k]}];" for i, k in enumerate(used)]
    clusters["legend"] += [" -> ".join(f"legend{i}" for i in range(len(used))) + " [style=invis];"]
    children: dict[str | None, list[str]] = {}
    for title in sorted(clusters):
        children.setdefault(_parent(title, clusters), []).append(title)
    numbers = itertools.count()

    def emit(title: str, pad: str) -> None:
        lines.append(f"{pad}subgraph cluster_{next(numbers)} {{")
        lines.append(f'{pad}  label={_q(title)}; fontname="Helvetica-Bold"; fontsize=12; '
                     f'style="rounded,dashed"; color="#999999";')
        lines.extend(f"{pad}  {s}" for s in clusters[title])
        for child in children.get(title, []):
            emit(child, pad + "  ")
        lines.append(f"{pad}}}")

    for title in children.get(None, []):
        emit(title, "  ")
    lines += [f"  {s}" for s in loose + edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_picture(g: Graph, path: Path) -> None:
    """Write `g` to `path`: DOT text for .dot, else rendered by Graphviz's `dot` in the suffix's format."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        known = ", ".join("." + f for f in FORMATS)
        raise GraphcError(f"{path}: unknown picture format '.{fmt}' (use {known})")
    text = to_dot(g)
    try:
        if fmt == "dot":
            path.write_text(text)
            return
        exe = shutil.which("dot")
        if exe is None:
            raise GraphcError(f"drawing {path.name} needs Graphviz's `dot` program, which is not installed",
                              hint="install Graphviz (apt-get install graphviz, brew install graphviz), "
                                   "or write a .dot file and render it elsewhere")
        done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text, capture_output=True, text=True)
    except OSError as e:
        raise GraphcError(f"cannot write {path}: {e.strerror or e}") from None
    if done.returncode != 0:
        raise GraphcError(f"dot could not render {path}: {done.stderr.strip()}")
