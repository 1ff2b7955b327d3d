"""Fusion: groups the nodes of a graph into kernels, the units codegen turns into loop nests.

- An elementwise node joins the kernel of a producer it reads element for element (same iteration
  space, identity index map), so elementwise chains become one loop; values used only inside the
  kernel never touch memory. Independent kernels that feed the same node that way merge into it.
- A reduction closes the elementwise kernel that computes its input (its prologue), unless it
  reduces the kernel's rows (its innermost axis, kept as size 1): then the kernel stays open to a row
  at a time (a ROWS kernel, the way layer norm and softmax are written by hand): further row
  reductions of its space, elementwise nodes over its space that read a row's value for the whole
  row, and elementwise nodes over its rows. Codegen makes a pass over each row per reduction (the
  row is in L1 after the first; what a later pass reads waits in a row buffer), so only what other
  kernels read is stored.
- A contraction (GEMM) starts a kernel of its own, and elementwise nodes over its output join it
  as its epilogue (bias, activation): each thread runs them on its block of C while that block is
  in cache, with no second pass. `EPILOGUE_BARS` names the nodes that stay out, each with its
  reason (the measurements are in docs/perf.md).
- A scatter-add, an external call, a pack and a view are kernels of their own (they read their inputs
  whole; a scatter writes rows its indices pick). So is a scan: one kernel for all of its result
  nodes, a loop that runs its body's own schedule (passes/pipeline.py) once per step.
Joining is refused when it would make the kernel depend on itself through another kernel.
Kernels are then ordered topologically, with one more rule from the design: the kernel that writes
a param or state in place runs after every kernel that reads its old value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

from graphc.errors import InternalError
from graphc.ir.graph import Graph, Node, Value
from graphc.ops.lowering import (Affine, Contraction, Extern, Indexed, Loop, Map, Pack, Pointwise, Reduction, Scatter,
                                 View)
from graphc.ops.registry import lowered


class KernelKind(Enum):
    ELEMENTWISE = "elementwise"
    REDUCE = "reduce"      # an elementwise prologue closed by a reduction
    ROWS = "rows"          # reductions along its rows and the elementwise work around them, a row at a time
    CONTRACT = "contract"  # a GEMM and its elementwise epilogue
    SCATTER = "scatter"    # rows added into a zeroed output at data-dependent indices
    EXTERN = "extern"      # a copy, then a call through the step's table
    PACK = "pack"          # operands gathered into one buffer (those the memory plan put there: no copy)
    SCAN = "scan"          # a loop running a body graph's kernels once per step
    VIEW = "view"


WHOLE = {Contraction: KernelKind.CONTRACT, Scatter: KernelKind.SCATTER, Extern: KernelKind.EXTERN,
         Loop: KernelKind.SCAN, View: KernelKind.VIEW, Pack: KernelKind.PACK}  # the kernel a node of each descriptor starts, reading its inputs whole


LOOPS = (KernelKind.ELEMENTWISE, KernelKind.REDUCE, KernelKind.ROWS)  # the kernels that are one loop nest


@dataclass(eq=False)
class Kernel:
    kind: KernelKind
    space: tuple[int, ...]         # the iteration space (for a reduction: its input's shape)
    nodes: list[Node] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)   # read from memory
    outputs: list[Value] = field(default_factory=list)  # written to memory

    @property
    def name(self) -> str:
        return f"{self.kind.value}_{self.nodes[-1].out.name.lstrip('%').replace('.', '_')}"

    @property
    def indexes_data(self) -> bool:
        """Reads or writes at indices taken from data (a gather, a scatter): it reports bad ones."""
        return self.kind is KernelKind.SCATTER or any(
            isinstance(a, Indexed) for n in self.nodes if isinstance(lowered(n), Pointwise)
            for m in input_maps(n) for a in m)


def same_loop(a: Node, b: Node) -> bool:
    """Two results of one scan: the same body over the same operands."""
    return a.attrs["body"] is b.attrs["body"] and a.inputs == b.inputs and a.attrs["reverse"] == b.attrs["reverse"]


def input_maps(n: Node) -> tuple[Map, ...]:
    """Per input of an elementwise or reduce node: the iteration axis each input axis follows."""
    d = lowered(n)
    if isinstance(d, Reduction):
        return (tuple(range(n.inputs[0].type.rank)),)
    assert isinstance(d, Pointwise), n.op
    return d.maps


def strides(shape: tuple[int, ...]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def access(v: Value, m: tuple, rank: int) -> list[int]:
    """Per iteration axis: the element stride of `v` along it (0 where v is broadcast, or only
    reached through an index read from data)."""
    coef = [0] * rank
    for axis, s in zip(m, strides(v.dims)):
        if isinstance(axis, int):
            coef[axis] += s
    return coef


def identity_access(v: Value, m: tuple, space: tuple) -> bool:
    return tuple(v.shape) == tuple(space) and m == tuple(range(len(space)))


def rows_of(space: tuple) -> tuple:
    """The shape of a value per row of `space` (its innermost axis reduced, kept as size 1)."""
    return tuple(space[:-1]) + (1,)


ROW_MAX = 2048  # elements of a row a ROWS kernel takes: its passes find it in L1, its buffers on the stack


def row_reduction(n: Node, space: tuple) -> bool:
    """`n` reduces a value of `space` along its rows (of at most ROW_MAX), keeping them as size 1."""
    return isinstance(lowered(n), Reduction) and tuple(n.inputs[0].dims) == tuple(space) \
        and tuple(n.out.dims) == rows_of(space) and 1 < space[-1] <= ROW_MAX


def _row_access(v: Value, m: tuple, space: tuple) -> bool:
    """`v` holds a value per row of `space`, read at every element of its row."""
    return tuple(v.dims) == rows_of(space) and m == tuple(range(len(space) - 1)) + (None,)


def joins_rows(k: Kernel, n: Node) -> bool:
    """`n` can join `k`, a kernel whose reductions all reduce its rows: a row reduction of its space,
    an elementwise node over its space reading the kernel's values element for element or a row's
    value for the whole row (and any other value as it reads it), or an elementwise node over its
    rows reading values of them."""
    if k.kind not in (KernelKind.REDUCE, KernelKind.ROWS) or \
            not all(row_reduction(r, k.space) for r in k.nodes if isinstance(lowered(r), Reduction)):
        return False
    rows = rows_of(k.space)
    d = lowered(n)
    reads = [(v, m) for v, m in zip(n.inputs, input_maps(n)) if v.const is None]
    if isinstance(d, Reduction):
        return row_reduction(n, k.space)
    if not isinstance(d, Pointwise):
        return False
    if tuple(n.out.dims) == tuple(k.space):
        return all(identity_access(v, m, k.space) or _row_access(v, m, k.space) for v, m in reads
                   if v.producer in k.nodes)
    return tuple(n.out.dims) == rows and all(identity_access(v, m, rows) for v, m in reads)


@dataclass(frozen=True)
class _Step:
    """What fusion's rules consult about the whole step."""

    updated: dict[Value, Value]  # a new value -> the param or state it overwrites in place
    stored: set[int]             # ids of values written to memory whatever is fused


def _reduces(gemm: Kernel, n: Node, step: _Step) -> bool:
    """A reduction needs all of C; the epilogue sees one thread's block."""
    return isinstance(lowered(n), Reduction)


def _streams_another_c(gemm: Kernel, n: Node, step: _Step) -> bool:
    """It reads another array as large as C (an optimizer's weights and moments): streaming it
    through the GEMM's threads measured slower than a loop kernel of its own."""
    return any(v.const is None and v.producer not in gemm.nodes and v.type.size() >= math.prod(gemm.space)
               for v in n.inputs)


def _overwrites_an_operand(gemm: Kernel, n: Node, step: _Step) -> bool:
    """It updates in place a param the GEMM reads: it would race the GEMM's reads."""
    return step.updated.get(n.out) in gemm.nodes[0].inputs


def _reads_only_stored_values(gemm: Kernel, n: Node, step: _Step) -> bool:
    """It reads nothing the epilogue holds in registers (relu's mask from the stored relu): in the
    epilogue it would write one more array; its consumer's loop computes it from what it reads."""
    return not any(v is gemm.nodes[0].out or v.producer in gemm.nodes and id(v) not in step.stored
                   for v in n.inputs)


def _not_rows_and_columns(gemm: Kernel, n: Node, step: _Step) -> bool:
    """An epilogue is a loop over C's rows (its leading axes as one) and one over its columns, which
    a thread's block of C restricts: C has batch axes (a thread's share is whole products), or `n`
    reads an operand that does not walk C's leading axes as one (a [B, 1, N] one of a [B, T, N] C)."""
    c = lowered(gemm.nodes[0])
    assert isinstance(c, Contraction)
    rows = [a for a in range(len(gemm.space) - 1) if gemm.space[a] > 1]

    def apart(v: Value, m: Map) -> bool:
        if any(isinstance(a, (Affine, Indexed)) for a in m):
            return True
        coef = access(v, m, len(gemm.space))
        return any(coef[p] != coef[a] * gemm.space[a] for p, a in zip(rows, rows[1:]))
    return bool(c.batch) or any(apart(v, m) for v, m in zip(n.inputs, input_maps(n)) if v.const is None)


EPILOGUE_BARS = (_not_rows_and_columns, _reduces, _streams_another_c, _overwrites_an_operand, _reads_only_stored_values)


class _Reach:
    """Which kernels each kernel depends on, transitively, kept up to date as fusion adds nodes to
    kernels and merges them, so that asking is a bit test (walking a kernel's inputs back to the
    step's start at each question made fusion quadratic in the model's size)."""

    def __init__(self) -> None:
        self.bit: dict[Kernel, int] = {}
        self.before: dict[Kernel, int] = {}           # the bits of the kernels it depends on
        self.sources: dict[Kernel, set[Kernel]] = {}  # the kernels whose values it reads
        self.readers: dict[Kernel, set[Kernel]] = {}  # the kernels that read its values

    def add(self, k: Kernel) -> None:
        self.bit[k] = 1 << len(self.bit)  # never reused: a merged-away kernel's bit stays its own
        self.before[k] = 0
        self.sources[k], self.readers[k] = set(), set()

    def depends(self, k: Kernel, on: Kernel) -> bool:
        return bool(self.before[k] & self.bit[on])

    def read(self, k: Kernel, p: Kernel) -> None:
        """`k` reads a value of `p`."""
        if p is not k and p not in self.sources[k]:
            self.sources[k].add(p)
            self.readers[p].add(k)
            self._spread(k, self.before[p] | self.bit[p])

    def merge(self, k: Kernel, other: Kernel) -> None:
        """`other`'s nodes joined `k` (neither depended on the other)."""
        for p in self.sources.pop(other):
            self.readers[p].discard(other)
            self.read(k, p)
        for r in self.readers.pop(other):
            self.sources[r].discard(other)
            self.read(r, k)

    def _spread(self, k: Kernel, bits: int) -> None:
        """`k`, and so every kernel that depends on it, now depends on `bits` too. A kernel that
        has them all already is where the walk stops: what depends on it has them as well."""
        todo = [k]
        while todo:
            d = todo.pop()
            if bits & ~self.before[d]:
                self.before[d] |= bits
                todo.extend(self.readers[d])


def fuse(g: Graph) -> list[Kernel]:
    kernel_of: dict[Node | None, Kernel] = {}  # (a leaf's producer, None, has none)
    kernels: dict[Kernel, None] = {}  # in order of creation
    reach = _Reach()

    def can_join(k: Kernel, n: Node, space: tuple) -> bool:
        if k.space != space or k.kind not in (KernelKind.ELEMENTWISE, KernelKind.CONTRACT):
            return False
        if k.kind is KernelKind.CONTRACT and any(bar(k, n, step) for bar in EPILOGUE_BARS):
            return False
        for v, m in zip(n.inputs, input_maps(n)):
            p = kernel_of.get(v.producer)
            if p is k and not identity_access(v, m, space):
                return False  # would read a value of this kernel before the loop has finished it
            if p is not None and p is not k and reach.depends(p, k):
                return False  # k -> p -> n: joining n into k makes a cycle
        return True

    def row_kernel(n: Node) -> Kernel | None:
        """The kernel of an operand of `n` that `n` joins as a row kernel's node (see `joins_rows`)."""
        producers = dict.fromkeys(kernel_of[v.producer] for v in n.inputs if v.producer in kernel_of)
        return next((k for k in producers if joins_rows(k, n)
                     and not any(reach.depends(p, k) for p in producers if p is not k)), None)

    def start(kind: KernelKind, space: tuple) -> Kernel:
        k = Kernel(kind, space)
        kernels[k] = None
        reach.add(k)
        return k

    order = {n: i for i, n in enumerate(g.nodes)}
    # written to memory whatever is fused: a step's result, or read by a node that is not elementwise
    step = _Step({new: target for target, new in g.updates},
                 _results(g) | {id(v) for n in g.nodes if not isinstance(lowered(n), Pointwise) for v in n.inputs})

    for n in g.nodes:
        d = lowered(n)
        if isinstance(d, (Pointwise, Reduction)):
            space = n.inputs[0].dims if isinstance(d, Reduction) else n.out.dims
            feeders = [kernel_of[v.producer] for v, m in zip(n.inputs, input_maps(n))
                       if v.producer in kernel_of and identity_access(v, m, space)]
            k = next((k for k in feeders if can_join(k, n, space)), None) or row_kernel(n) \
                or start(KernelKind.ELEMENTWISE, space)
            if k.kind is KernelKind.REDUCE:  # a row kernel now: n joined it past its reduction
                k.kind = KernelKind.ROWS
            for other in feeders:  # sibling producers of n's operands join too: one loop, not two
                # (never into an epilogue: a sibling's value is as large as C, which bars n)
                if other is not k and other in kernels and k.kind == other.kind == KernelKind.ELEMENTWISE \
                        and can_join(other, n, space) and not reach.depends(k, other) \
                        and not reach.depends(other, k):
                    k.nodes = sorted(k.nodes + other.nodes, key=order.__getitem__)
                    for m in other.nodes:
                        kernel_of[m] = k
                    del kernels[other]
                    reach.merge(k, other)
            if isinstance(d, Reduction) and k.kind is KernelKind.ELEMENTWISE:
                k.kind = KernelKind.REDUCE  # closes the kernel, unless a row joins it after its reduction
        else:
            scan = next((s for s in kernels if s.kind is KernelKind.SCAN and same_loop(s.nodes[0], n)),
                        None) if isinstance(d, Loop) else None
            k = scan or start(WHOLE[type(d)], n.out.dims)
        k.nodes.append(n)
        kernel_of[n] = k
        for v in n.inputs:
            if v.producer in kernel_of:
                reach.read(k, kernel_of[v.producer])

    _connect(g, list(kernels), kernel_of)
    return _order(g, list(kernels), kernel_of)


def _results(g: Graph) -> set[int]:
    """ids of the values a step keeps: its outputs and its updated params and state."""
    return {id(v) for v in g.outputs.values()} | {id(new) for _, new in g.updates}


def _connect(g: Graph, kernels: list[Kernel], kernel_of: dict[Node | None, Kernel]) -> None:
    stored = _results(g)
    for k in kernels:
        inside = set(k.nodes)
        for n in k.nodes:
            # a GEMM, scatter, call or view reads its inputs whole; only an epilogue follows the loop's index
            whole = k.kind not in LOOPS and (n is k.nodes[0] or k.kind is KernelKind.SCAN)
            maps = (None,) * len(n.inputs) if whole else input_maps(n)
            for v, m in zip(n.inputs, maps):
                # inside a row kernel, a row's value is kept for its row too
                internal = v.producer in inside and m is not None and (
                    identity_access(v, m, k.space) or k.kind is KernelKind.ROWS)
                if v.const is None and not internal and v not in k.inputs:
                    k.inputs.append(v)
                if v.producer is not None and v.producer not in inside:
                    out = kernel_of[v.producer]
                    if v not in out.outputs:
                        out.outputs.append(v)
        for n in k.nodes:
            if id(n.out) in stored and n.out not in k.outputs:
                k.outputs.append(n.out)
        # a reduction's result, and the C a GEMM writes before its epilogue reads it
        closing = {KernelKind.REDUCE: k.nodes[-1].out, KernelKind.CONTRACT: k.nodes[0].out}.get(k.kind)
        if closing is not None and closing not in k.outputs:
            k.outputs.append(closing)
    for k in kernels:  # keep outputs in node order (deterministic printing and codegen)
        order = {n.out: i for i, n in enumerate(k.nodes)}
        k.outputs.sort(key=lambda v: order[v])


def _order(g: Graph, kernels: list[Kernel], kernel_of: dict[Node | None, Kernel]) -> list[Kernel]:
    after: dict[Kernel, set[Kernel]] = {k: set() for k in kernels}
    readers: dict[Value, list[Kernel]] = {}
    for k in kernels:
        for v in k.inputs:
            readers.setdefault(v, []).append(k)
            if v.producer is not None:
                after[k].add(kernel_of[v.producer])
    for target, new in g.updates:
        writer = kernel_of[new.node]
        after[writer].update(k for k in readers.get(target, []) if k is not writer)
    position = {n: i for i, n in enumerate(g.nodes)}
    first = {k: min(position[n] for n in k.nodes) for k in kernels}
    done: list[Kernel] = []
    placed: set[Kernel] = set()
    pending = sorted(kernels, key=first.__getitem__)
    while pending:
        ready = next((k for k in pending if after[k] <= placed), None)
        if ready is None:
            raise InternalError(f"{g.name}: kernel order has a cycle (an update before a reader?)")
        pending.remove(ready)
        placed.add(ready)
        done.append(ready)
    return done
