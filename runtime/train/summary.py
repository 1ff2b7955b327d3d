"""`graphc summary`: a model's layers with their output shapes, parameter counts and forward FLOPs,
and the training step's memory (what Keras' summary and torchinfo show).

A row is a layer instance (a run of nodes of one scope, `fc1`; a layer nested in it, `conv1.bn`, is
a row between its parent's), or for nodes outside any layer the ops of one source line. FLOPs are counted on the inference graph at one sample, from each op's lowering in
the registry: a contraction (matmul, and convolution through it) is 2 per multiply-add, an
elementwise op that computes is 1 per output element, a reduction 1 per element it reads, and
moves (reshape, transpose, windows, padding) are free; a composite op counts what it decomposes to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from graphc.autodiff.graphs import inference_graph
from graphc.driver import batch_dim, forward, train_graph
from graphc.errors import GraphcError
from graphc.frontend import Program
from graphc.ir.graph import Graph, Input, Node
from graphc.ops import REGISTRY
from graphc.ops.lowering import Contraction, Decompose, Pointwise, Reduction
from graphc.passes.decompose import decompose
from graphc.passes.memory import nbytes
from graphc.passes.pipeline import schedule


@dataclass
class Row:
    layer: str          # the scope, or "line N" for nodes outside any layer
    ops: list[str] = field(default_factory=list)  # the ops it runs, each once, in order
    shape: str = ""     # its last node's output shape
    params: int = 0     # elements of the params it reads first
    flops: int = 0      # forward FLOPs per sample (per step where the batch is fixed)


@dataclass
class Summary:
    name: str
    batch: int               # the training step's batch
    per_sample: bool         # FLOPs per sample (else per step: the model has no batch dim)
    rows: list[Row]
    params: int              # elements of every param
    param_bytes: int
    state_bytes: int         # optimizer state and the model's state (running statistics)
    input_bytes: int         # the step's inputs at its batch
    arena_bytes: int         # the step's intermediates (the memory plan's arena)


class _Arithmetic:
    """A Scalar builder (ops/lowering.py) that counts the arithmetic an elementwise expression does:
    constants, indices and conversions are free, so a pure move counts 0."""

    FREE = frozenset({"const", "index", "flat_index", "u32", "to_float", "to_u32"})

    def __init__(self) -> None:
        self.ops = 0

    def __getattr__(self, name: str):
        def op(*args: object) -> object:
            self.ops += name not in self.FREE
            return object()
        return op


def node_flops(n: Node) -> int:
    """The forward FLOPs of a bound node (see the module docstring)."""
    lowering = REGISTRY[n.op].lowering
    if isinstance(lowering, Decompose):
        leaves = list({id(v): v for v in n.inputs if v.const is None}.values())
        one = Graph(n.op, inputs=[Input(v) for v in leaves], nodes=[n], outputs={"out": n.out})
        return sum(node_flops(m) for m in decompose(one).nodes)
    d = lowering.at(n)
    if isinstance(d, Contraction):
        return 2 * d.macs
    if isinstance(d, Reduction):
        return math.prod(n.inputs[0].dims)
    if isinstance(d, Pointwise):
        s = _Arithmetic()
        d.expr(s, *(object() for _ in n.inputs))
        return math.prod(n.out.dims) if s.ops else 0
    return 0  # views, scatters, external calls


def _key(n: Node) -> str:
    return n.scope or (f"line {n.loc.line}" if n.loc else n.op)


def _predicting(g: Graph) -> Graph:
    """What the model predicts, or the whole forward graph where it predicts nothing."""
    try:
        return inference_graph(g)
    except GraphcError:
        return g


def summarize(prog: Program, batch: int | None = None) -> Summary:
    """The summary of `prog`, its training step compiled (scheduled) at `batch` (the train block's)."""
    batch = batch or prog.train.batch
    shown = _predicting(prog.eval_graph)  # symbolic dims, as the model file writes them
    bound = _predicting(forward(prog, 1, training=False))  # the same nodes at one sample
    rows: list[Row] = []
    seen: set[int] = set()
    params = {id(p.value) for p in shown.params}
    for n, at_one in zip(shown.nodes, bound.nodes, strict=True):
        if not rows or rows[-1].layer != _key(n):  # a run of nodes: a nested layer splits its parent
            rows.append(Row(_key(n)))
        row = rows[-1]
        if n.op not in row.ops:
            row.ops.append(n.op)
        row.shape = "[" + ", ".join(map(str, n.out.shape)) + "]"
        row.flops += node_flops(at_one)
        for v in n.inputs:
            if id(v) in params and id(v) not in seen:
                seen.add(id(v))
                row.params += math.prod(v.dims)
    step = train_graph(prog, batch)
    plan = schedule(step).plan
    return Summary(prog.graph.name, batch, batch_dim(prog.graph) is not None, rows,
                   sum(math.prod(p.value.dims) for p in step.params),
                   sum(nbytes(p.value) for p in step.params), sum(nbytes(s.value) for s in step.state),
                   sum(nbytes(i.value) for i in step.inputs), plan.arena_bytes)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def format_summary(s: Summary) -> str:
    """The summary as a table, totals at the end."""
    per = "per sample" if s.per_sample else "per step"
    head = ("layer", "ops", "output shape", "params", f"FLOPs {per}")
    body = [(r.layer, " ".join(r.ops), r.shape, f"{r.params:,}", f"{r.flops:,}") for r in s.rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    line = "  ".join

    def fmt(row: tuple[str, ...]) -> str:
        return line(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(head))
    flops = sum(r.flops for r in s.rows)
    return "\n".join([f"model {s.name}", rule, fmt(head), rule, *map(fmt, body), rule,
                      f"params: {s.params:,} ({_size(s.param_bytes)})",
                      f"forward FLOPs {per}: {flops:,}",
                      f"training step{f' at batch {s.batch}' if s.per_sample else ''}: params {_size(s.param_bytes)}, optimizer and "
                      f"model state {_size(s.state_bytes)}, inputs {_size(s.input_bytes)}, "
                      f"arena {_size(s.arena_bytes)}; "
                      f"{_size(s.param_bytes + s.state_bytes + s.input_bytes + s.arena_bytes)} in all"])
