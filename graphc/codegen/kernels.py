"""Loop nests for fused kernels: elementwise chains and reductions with their elementwise prologue,
and scatter-adds.

Per iteration every external operand is loaded first (a gathered row when the index it needs is
known), the members' scalar expressions are computed in order, and stored values are written last,
so an in-place update (W <- W - lr*dW) reads the old element before writing the new one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from llvmlite import ir

from graphc.codegen.scalar import FTYPES, LLTYPES, LLVMScalar
from graphc.ir.graph import Node, Value
from graphc.ops.lowering import Affine, Indexed, Pointwise, ReduceKind, Reduction, Scatter
from graphc.ops.registry import lowered
from graphc.passes.fuse import Kernel, KernelKind, access, identity_access, input_maps, rows_of, strides

I64 = ir.IntType(64)
# A column sum's rows are summed in blocks, each into a partial row of its own (the first into the
# output), and the partials added in order: threads take whole blocks of the rows they wrote, and
# the bits do not depend on how many there are. At most CHUNKS blocks of at least CHUNK_ROWS rows.
CHUNKS, CHUNK_ROWS = 8, 16


def _i64(x: int | ir.Value) -> ir.Value:
    return x if isinstance(x, ir.Value) else ir.Constant(I64, x)


def _smax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return b.select(b.icmp_signed("<", x, y), x, y)


def for_range(b: ir.IRBuilder, n: int | ir.Value, body: Callable[[ir.Value], None],
              start: int | ir.Value = 0, vectorize: bool | None = None) -> None:
    """for i in [start, n): body(i). `vectorize`: None leaves it to LLVM; False keeps the loop
    scalar (a loop of a few iterations, where entering vector code costs more than it saves); True
    vectorizes it, whatever its trip count, and keeps LLVM from unrolling it first (see
    `Loops.unrolled`)."""
    pre = b.block
    cond = b.append_basic_block("for.cond")
    blk = b.append_basic_block("for.body")
    end = b.append_basic_block("for.end")
    b.branch(cond)
    b.position_at_end(cond)
    i = b.phi(I64)
    i.add_incoming(_i64(start), pre)
    b.cbranch(b.icmp_signed("<", i, _i64(n)), blk, end)
    b.position_at_end(blk)
    body(i)
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
    latch = b.branch(cond)
    if vectorize is not None:
        latch.set_metadata("llvm.loop", _loop_id(b.module, vectorize))
    b.position_at_end(end)


def _loop_id(m: ir.Module, vectorize: bool) -> ir.MDValue:
    """A loop ID (self-referencing, as LLVM wants) that turns vectorization on or off; on, it also
    turns unrolling off, which would otherwise run first."""
    name = f"graphc.{'vector' if vectorize else 'scalar'}_loop"
    if name not in m.namedmetadata:
        hints = [m.add_metadata([ir.MetaDataString(m, "llvm.loop.vectorize.enable"),
                                 ir.Constant(ir.IntType(1), int(vectorize))])]
        if vectorize:
            hints.append(m.add_metadata([ir.MetaDataString(m, "llvm.loop.unroll.disable")]))
        loop = m.add_metadata([*hints, ir.MetaDataString(m, name)])
        loop.operands = (loop, *hints)
        m.add_named_metadata(name, loop)  # remembers it for the module's other loops
    return m.get_named_metadata(name).operands[0]


TINY = 4  # iterations of a loop that may be unrolled (see Loops.unrolled)

Ranges = tuple  # per loop from the outermost, (lo, hi) restricting it (a thread's share) or None
Partials = tuple[ir.Value, int] | None  # a scratch pointer (i8*) and the byte offset of a kernel's partial results


def nest(b: ir.IRBuilder, dims: tuple[int, ...], body: Callable[[list[ir.Value]], None],
         idx: tuple = (), ranges: Ranges = (), unroll: int = 0, vectorize: bool | None = None) -> None:
    """Loops over `dims`, the first ones restricted to `ranges`, but the last `unroll`: their
    iterations are emitted one after another, with constant indices. `vectorize` is the innermost
    loop's hint (see `for_range`)."""
    if len(dims) == unroll:
        for c in itertools.product(*map(range, dims)):
            body([*idx, *map(_i64, c)])
        return
    lo, hi = (ranges[0] if ranges else None) or (0, dims[0])
    for_range(b, hi, lambda i: nest(b, dims[1:], body, idx + (i,), ranges[1:], unroll, vectorize), lo,
              vectorize if len(dims) == unroll + 1 else None)


def offset(b: ir.IRBuilder, idx: list[ir.Value], coef: list[int]) -> ir.Value:
    total = ir.Constant(I64, 0)
    for i, c in zip(idx, coef):
        if c:
            total = b.add(total, b.mul(i, ir.Constant(I64, c)))
    return total


@dataclass(frozen=True)
class Fault:
    """Where a kernel reports a bad index: `ptr`, the step table's `fault` slot (four i64 words, see
    `report`); `kernel`, its position in the schedule; `check_bounds`: every access is checked
    (--check-bounds), not only those at indices read from data."""

    ptr: ir.Value
    kernel: int
    check_bounds: bool = False

    def report(self, b: ir.IRBuilder, site: int, index: ir.Value, bound: int) -> None:
        """Record a bad index unless a fault is recorded already (the first wins, across threads):
        kernel + 1, `site` (1 + the node's position in the kernel for an index read from data; 0
        for an access outside a buffer), the index and the bound it broke."""
        words = b.bitcast(self.ptr, I64.as_pointer())
        first = b.cmpxchg(words, _i64(0), _i64(self.kernel + 1), "monotonic", "monotonic")
        with b.if_then(b.extract_value(first, 1)):
            for i, x in enumerate((_i64(site), index, _i64(bound)), 1):
                b.store(x, b.gep(words, [_i64(i)]))


def _affine(b: ir.IRBuilder, a: Affine, idx: list[ir.Value]) -> ir.Value:
    """Σ coef · idx[axis] + offset (before the division)."""
    t = _i64(a.offset)
    for axis, coef in a.terms:
        t = b.add(t, b.mul(idx[axis], _i64(coef)))
    return t


def _inside(b: ir.IRBuilder, t: ir.Value, size: int) -> ir.Value:
    return b.and_(b.icmp_signed(">=", t, _i64(0)), b.icmp_signed("<", t, _i64(size)))


def element(v: Value, x: float) -> ir.Constant:
    """`x` as one element of `v`'s dtype."""
    return ir.Constant(LLTYPES[v.dtype], x if v.type.is_float else int(x))


def gather(b: ir.IRBuilder, load: Callable[[ir.Value], ir.Value], v: Value, m: tuple,
           idx: list[ir.Value], fill: ir.Value, checked: bool = True) -> ir.Value:
    """Read `v` through a map with `Affine` axes: compute each such index, and read `fill` where it
    falls outside `v` (`load` of a flat offset always gets a valid one). Unchecked, every index is
    known to be inside: a plain load."""
    ok = ir.Constant(ir.IntType(1), 1)
    lin = _i64(0)
    for a, size, stride in zip(m, v.dims, strides(v.dims)):
        if a is None:
            continue
        if isinstance(a, Affine):
            t = _affine(b, a, idx)
            if a.div != 1:
                q = b.sdiv(t, _i64(a.div))
                ok = b.and_(ok, b.icmp_signed("==", b.mul(q, _i64(a.div)), t))
                t = q
            ok = b.and_(ok, _inside(b, t, size))
        else:
            t = idx[a]
        lin = b.add(lin, b.mul(t, _i64(stride)))
    if not checked:
        return load(lin)
    # a branch, not a select of the address: the loop vectorizer turns it into a masked load
    pre = b.block
    with b.if_then(ok):
        x, inside = load(lin), b.block
    out = b.phi(x.type)
    out.add_incoming(x, inside)
    out.add_incoming(fill, pre)
    return out


def _floor_div(b: ir.IRBuilder, x: ir.Value, d: int) -> ir.Value:
    """floor(x / d) for d > 0 (sdiv rounds toward zero)."""
    return b.select(b.icmp_signed("<", x, _i64(0)), b.sdiv(b.sub(x, _i64(d - 1)), _i64(d)), b.sdiv(x, _i64(d)))


def _inner_coef(a: Affine, inner: tuple[int, ...]) -> int:
    """How far access `a`'s index moves per step of the innermost loop (over axes `inner`)."""
    return sum(cf for ax, cf in a.terms if ax in inner)


def _edges(accesses: list[tuple[Affine, int]], inner: tuple[int, ...], space: tuple[int, ...]) -> int | None:
    """An upper bound on the innermost loop's iterations outside `_clean_range`, over all outer
    indices (interval arithmetic on each access's index at inner = 0); None where it has none."""
    trips, total = math.prod(space[a] for a in inner), 0
    for a, size in accesses:
        coef = _inner_coef(a, inner)
        if coef and a.div != 1:
            return None
        if not coef:
            continue  # all or nothing per row: decided once, outside the loop
        spans = [cf * (space[ax] - 1) for ax, cf in a.terms if ax not in inner]
        lo = a.offset + sum(min(0, x) for x in spans)
        hi = a.offset + sum(max(0, x) for x in spans)
        if coef < 0:  # mirror: i -> trips - 1 - i
            lo, hi, coef = lo + coef * (trips - 1), hi + coef * (trips - 1), -coef
        total += max(0, -(lo // coef)) + max(0, trips - ((size - 1 - hi) // coef + 1))
    return min(total, trips)


def _clean_range(b: ir.IRBuilder, accesses: list[tuple[Affine, int]], inner: tuple[int, ...],
                 idx: list[ir.Value], trips: int) -> tuple[ir.Value, ir.Value]:
    """[lo, hi): the innermost loop's indices where every affine access (Affine, size) is inside
    its value, given the outer loops' indices (`idx`, the inner axis at 0), so that stretch runs
    unchecked and vectorizes. No access may divide the inner index (`_edges` is None then)."""
    lo, hi = _i64(0), _i64(trips)
    for a, size in accesses:
        coef = _inner_coef(a, inner)
        rest = _affine(b, a, idx)  # the index at inner = 0
        if a.div != 1:  # invariant along the row
            q = b.sdiv(rest, _i64(a.div))
            ok = b.and_(b.icmp_signed("==", b.mul(q, _i64(a.div)), rest), _inside(b, q, size))
            hi = b.select(ok, hi, _i64(0))
        elif coef == 0:
            hi = b.select(_inside(b, rest, size), hi, _i64(0))
        elif coef > 0:  # 0 <= rest + coef*i <= size - 1
            lo = _smax(b, lo, b.neg(_floor_div(b, rest, coef)))
            hi = _smin(b, hi, b.add(_floor_div(b, b.sub(_i64(size - 1), rest), coef), _i64(1)))
        else:  # 0 <= rest - |coef|*i <= size - 1
            lo = _smax(b, lo, b.add(_floor_div(b, b.sub(rest, _i64(size)), -coef), _i64(1)))
            hi = _smin(b, hi, b.add(_floor_div(b, rest, -coef), _i64(1)))
    return lo, hi


def _reduction(k: Kernel) -> Reduction:
    """The reduction closing a reduce kernel."""
    d = lowered(k.nodes[-1])
    assert isinstance(d, Reduction), k.nodes[-1].op
    return d


def compute_dtype(k: Kernel) -> str:
    return next((n.out.dtype for n in k.nodes if n.out.type.is_float), "f32")


@dataclass(frozen=True)
class Loops:
    """A kernel's loop nest. A reduction runs its kept axes outermost (each output element is finished
    in a register, and threads can split the outer loop) unless its innermost axis is kept (a column
    sum, or col2im's sum over taps): then that innermost kept loop stays innermost and whole rows
    accumulate in the output, vectorized, with the reduced loops around it and the other kept ones
    outermost (threads split those, each zeroing and filling its own rows of the output; with none,
    a column sum, its rows are summed in blocks, `chunks`). Adjacent
    axes merge into one loop wherever every memory access walks them as one (a whole elementwise
    chain: one flat loop).

    The last loops may be `unrolled`: at most TINY iterations each and 16 in all (a 2×2 pooling
    window), the innermost of an elementwise chain or all the reduced ones of a register reduction,
    where no index is computed. The loop around them is then marked for vectorization and not
    unrolled: left to itself, LLVM unrolls it completely too (rows of 14 or 5 pooled pixels) and
    vectorizes the loop around it with gathers, or not at all (docs/perf.md)."""

    groups: tuple[tuple[int, ...], ...]  # the iteration-space axes each loop runs over
    space: tuple[int, ...]               # trip counts
    kept: int                            # leading loops over kept axes (threads split the first)
    in_memory: bool = False              # a reduction accumulates in its output, in memory order
    unrolled: int = 0                    # trailing loops emitted unrolled (see above)

    @property
    def columns(self) -> bool:
        """An in-memory reduction with no kept loop outside (a column sum: a bias gradient)."""
        return self.in_memory and self.kept == 0

    @property
    def chunks(self) -> int:
        """The blocks a column sum's outermost (reduced) loop is summed in (see CHUNKS); else 1."""
        return max(1, min(CHUNKS, self.space[0] // CHUNK_ROWS)) if self.columns else 1

    def squash(self, coef: list[int]) -> list[int]:
        """Per-axis strides -> per-loop strides (a merged group moves like its innermost axis)."""
        return [coef[g[-1]] for g in self.groups]

    def originals(self, b: ir.IRBuilder, idx: list[ir.Value], shape: tuple[int, ...]) -> list[ir.Value]:
        """Per iteration-space axis, its index (the optimizer drops the ones nothing uses)."""
        out: list[ir.Value] = [ir.Constant(I64, 0)] * len(shape)
        for i, g in zip(idx, self.groups):
            inner = math.prod(shape[a] for a in g)
            for a in g:
                inner //= shape[a]
                q = b.udiv(i, ir.Constant(I64, inner)) if inner > 1 else i
                out[a] = b.urem(q, ir.Constant(I64, shape[a])) if a != g[0] else q
        return out


def _reach(v: Value, m: tuple, rank: int) -> list[int]:
    """Per iteration axis: how far a step along it moves in `v` read through map `m` (an index
    computed from several axes, as col2im's, counts for each of them)."""
    out = access(v, m, rank)
    for a, st in zip(m, strides(v.dims)):
        for axis, coef in a.terms if isinstance(a, Affine) else ():
            out[axis] += abs(coef) * st
    return out


def loops(k: Kernel, epilogue: bool = False) -> Loops:
    """The loop nest of `k`; for a GEMM's `epilogue`, one loop over C's rows and one over its columns
    (its last axis), which a thread's block restricts (fusion admits no node that would need more)."""
    rank = len(k.space)
    coefs, pinned, gathers = [strides(k.space)], set(), False
    for n in k.nodes:
        for v, m in zip(n.inputs, input_maps(n)):
            gathers |= any(isinstance(a, Indexed) for a in m)  # its loads branch: nothing unrolled
            if any(isinstance(a, Affine) for a in m):
                # computed indices keep their own loops
                gathers = True
                pinned |= {a for a in m if isinstance(a, int)}
                pinned |= {ax for a in m if isinstance(a, Affine) for ax, _ in a.terms}
            elif v.const is None:
                coefs.append(access(v, m, rank))
    reduced = set(_reduction(k).axes) if k.kind is KernelKind.REDUCE else {rank - 1} if k.kind is KernelKind.ROWS else set()
    axes = [a for a in range(rank) if k.space[a] > 1]  # a size-1 axis is always at 0: no loop
    before = {a: p for p, a in zip(axes, axes[1:])}
    inner_kept = bool(reduced & set(axes)) and axes[-1] not in reduced
    mergeable = lambda p, a: not (epilogue and a == rank - 1) and not {p, a} & pinned \
        and all(c[p] == c[a] * k.space[a] for c in coefs)
    tail = [axes[-1]] if inner_kept else []  # in memory: the innermost kept loop, vectorized
    while tail and tail[0] in before and before[tail[0]] not in reduced and mergeable(before[tail[0]], tail[0]):
        tail.insert(0, before[tail[0]])
    # kept axes outside, then reduced ones; for an in-memory sum the innermost kept loop comes last,
    # so each output row takes every reduced term while it is in L1
    outer = [a for a in axes if a not in reduced and a not in tail]
    reads = [(v, m) for n in k.nodes for v, m in zip(n.inputs, input_maps(n)) if v.const is None]
    if reduced and reads:  # a reduction's kept loops walk the largest array it reads in its layout's order
        step = _reach(*max(reads, key=lambda vm: vm[0].type.size()), rank)
        outer.sort(key=lambda a: -step[a])
    order = outer + [a for a in axes if a in reduced] + tail
    groups: list[list[int]] = []
    for a in order:
        p = groups[-1][-1] if groups else None
        if p is not None and p == before.get(a) and (p in reduced) == (a in reduced) and mergeable(p, a):
            groups[-1].append(a)
        else:
            groups.append([a])
    kept = next((i for i, g in enumerate(groups) if g[0] in reduced), len(groups))
    space = tuple(math.prod(k.space[a] for a in g) for g in groups)
    tiny = 0
    while (tiny < len(space) - 1 and space[-1 - tiny] <= TINY
           and math.prod(space[len(space) - 1 - tiny:]) <= 16):
        tiny += 1
    if gathers or inner_kept or k.kind is KernelKind.ROWS or (reduced and tiny != len(space) - kept):
        tiny = 0
    return Loops(tuple(map(tuple, groups)), space, kept, inner_kept, tiny)


def emit_loop_kernel(fn: ir.Function, k: Kernel, arg_of: dict[Value, ir.Value], ranges: Ranges = (),
                     fault: Fault | None = None, epilogue: bool = False, partials: Partials = None) -> None:
    """The body of an elementwise or reduce kernel; `arg_of` maps stored/loaded values to pointers;
    `ranges` restricts the outermost loops of `loops(k, epilogue)` (a thread's share; for a reduction,
    its kept loops; for a column sum in `Loops.chunks` blocks, its one range is of blocks, and
    `partials` is where the blocks after the first leave their rows: `add_chunks` adds them in).
    Rows read at indices from data are checked, reported to `fault` (which such a kernel needs); with
    `fault.check_bounds` every access is: an offset outside its value is not made, and reported."""
    _LoopNest(fn, k, arg_of, fault, epilogue, partials).emit(ranges)


@dataclass
class _Pass:
    """A pass over a row of a ROWS kernel (see `_LoopNest._passes`), or the one iteration of any
    other loop kernel: the nodes it computes, the values it stores, and those it reads from row
    buffers and writes to them."""

    nodes: set[Node]
    stores: list[Value]
    reads: list[Value] = field(default_factory=list)
    writes: list[Value] = field(default_factory=list)


class _LoopNest:
    """One loop kernel being emitted: its loops, how each operand is read, and the body."""

    def __init__(self, fn: ir.Function, k: Kernel, arg_of: dict[Value, ir.Value], fault: Fault | None,
                 epilogue: bool, partials: Partials) -> None:
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.k, self.arg_of, self.fault = k, arg_of, fault
        self.dtype = compute_dtype(k)
        self.partials = partials and self.b.bitcast(self.b.gep(partials[0], [ir.Constant(I64, partials[1])]),
                                                    FTYPES[self.dtype].as_pointer())
        self.members = set(k.nodes)
        self.maps = {n: input_maps(n) for n in k.nodes}
        self.point = {n: d for n in k.nodes if isinstance(d := lowered(n), Pointwise)}
        self.rank = len(k.space)
        self.red = k.nodes[-1] if k.kind is KernelKind.REDUCE else None
        self.part: tuple[_Pass, dict[Value, ir.Value]] | None = None  # a ROWS pass, the row's values known
        self.passes = self._passes() if k.kind is KernelKind.ROWS else []
        # a row buffer for each value one pass over a row leaves to a later one
        self.buffers = {v: self.b.alloca(LLTYPES[v.dtype], k.space[-1]) for p in self.passes for v in p.writes}
        self.lp = loops(k, epilogue)
        reads = [(v, m) for n in k.nodes for v, m in zip(n.inputs, self.maps[n])]
        # a constant reads like any value of its shape: through its map, `fill` outside it
        self.gathered = {(v, m) for v, m in reads if any(isinstance(a, Affine) for a in m)}
        # read at a node's turn, once the index operands it needs are known
        self.indexed = {(v, m) for v, m in reads if any(isinstance(a, Indexed) for a in m)}
        # in the order the nodes read them (not the set's, which varies run to run: the code would too)
        self.accesses = list(dict.fromkeys((a, size) for v, m in reads if (v, m) in self.gathered
                                           for a, size in zip(m, v.dims) if isinstance(a, Affine)))
        # the innermost loop runs the stretch where every gather is inside its value unchecked (a
        # plain strided loop) and the edges checked, scalar, if edges are short; else it is one
        # checked loop (where a gather is a masked load, for short rows cheaper than three loops)
        edges = _edges(self.accesses, self.lp.groups[-1], k.space) if self.accesses and self.lp.groups else None
        self.split = edges is not None and 4 * edges <= self.lp.space[-1]

    def emit(self, ranges: Ranges) -> None:
        b, lp = self.b, self.lp
        # loops unrolled into the one around them, which is vectorized (see Loops.unrolled): not where a
        # thread's range covers them, and not forced where bounds checks branch (LLVM would refuse)
        self.unrolled = lp.unrolled if len(ranges) <= len(lp.space) - lp.unrolled else 0
        self.vector = True if self.unrolled and self.fault is None else None
        if self.k.kind is KernelKind.ROWS:
            nest(b, lp.space[:lp.kept], lambda oidx: self.rows(oidx), ranges=ranges)
        elif self.red is None:
            self.run(lp.space, [], None, ranges)
        else:
            red = self.red
            _reduce(b, self.k, lp, red, self.dtype, self.run, self.arg_of[red.out],
                    lambda row, off: self.at(row, off, red.out), ranges, self.vector, self.partials)
        b.ret_void()

    def at(self, ptr: ir.Value, off: ir.Value, v: Value) -> ir.Value:
        """The address of element `off` of value `v` (checked against v's size in a bounds build)."""
        b, fault = self.b, self.fault
        if fault is None or not fault.check_bounds:
            return b.gep(ptr, [off])
        zero, size = ir.Constant(I64, 0), math.prod(v.dims)
        ok = b.icmp_unsigned("<", off, ir.Constant(I64, size))  # a negative offset is a huge one
        with b.if_then(b.not_(ok), likely=False):
            fault.report(b, 0, off, size)
        return b.gep(ptr, [b.select(ok, off, zero)])

    def row(self, v: Value, m: tuple, ops: list, site: int, idx: list[ir.Value]) -> ir.Value:
        """`v` read through an `Indexed` map: each data index checked, row 0 read for a bad one."""
        b, fault = self.b, self.fault
        assert fault is not None  # a kernel that indexes from data is given one
        lin = offset(b, idx, self.lp.squash(access(v, m, self.rank)))
        for a, size, stride in zip(m, v.dims, strides(v.dims)):
            if isinstance(a, Indexed):
                i = b.sext(ops[a.operand], I64)
                ok = b.icmp_unsigned("<", i, ir.Constant(I64, size))
                with b.if_then(b.not_(ok), likely=False):
                    fault.report(b, site, i, size)
                lin = b.add(lin, b.mul(b.select(ok, i, ir.Constant(I64, 0)), ir.Constant(I64, stride)))
        return element(v, v.const) if v.const is not None else b.load(self.at(self.arg_of[v], lin, v))

    def rows(self, oidx: list[ir.Value]) -> None:
        """One row of a ROWS kernel: its nodes in order, a reduction as a pass over the row (see
        `_passes`), a node over rows once the values it reads are known; then a last pass storing
        the elementwise values other kernels read. Values per row they read are stored when known."""
        b, k, lp = self.b, self.k, self.lp
        row_space = rows_of(k.space)
        at_row = lambda v: self.at(self.arg_of[v], offset(b, oidx + [_i64(0)], lp.squash(strides(row_space))), v)
        known: dict[Value, ir.Value] = {}
        s = LLVMScalar(b, self.dtype, lp.originals(b, oidx + [_i64(0)], k.space), row_space)
        passes = iter(self.passes)
        for n in k.nodes:
            if tuple(n.out.dims) == tuple(k.space):
                continue  # computed in the passes that need it
            if n in self.point:
                ops = [s.const(v.const) if v.const is not None and v.type.is_float else
                       element(v, v.const) if v.const is not None else known[v] if v in known else
                       b.load(at_row(v)) for v in n.inputs]
                known[n.out] = self.point[n].expr(s, *ops)
            else:
                red = lowered(n)
                assert isinstance(red, Reduction)
                acc = _Register(b, red.kind, self.dtype)
                self.part = next(passes), known
                self.run(lp.space[lp.kept:], oidx, lambda idx, x, acc=acc: acc.add(x))
                known[n.out] = acc.value()
            if n.out in k.outputs:
                b.store(known[n.out], at_row(n.out))
        last = next(passes, None)
        if last is not None:
            self.part = last, known
            self.run(lp.space[lp.kept:], oidx, None)
        self.part = None

    def _passes(self) -> list[_Pass]:
        """The passes over a row of a ROWS kernel: one per reduction, computing it and the
        elementwise nodes its operand needs, then one for the values of its space that it stores.
        A value an earlier pass computed is not computed again: that pass leaves it in a row buffer."""
        k, full = self.k, lambda v: tuple(v.dims) == tuple(self.k.space)
        by_name = lambda vs: sorted(vs, key=lambda v: v.name)
        stored = [v for v in k.outputs if full(v)]
        targets = [([n], list(n.inputs)) for n in k.nodes if n not in self.point] + ([([], stored)] if stored else [])
        passes: list[_Pass] = []
        done: set[Value] = set()
        for reduction, wanted in targets:
            nodes: set[Node] = set()
            todo = [v for v in wanted if v not in done]
            while todo:
                n = todo.pop().producer
                if n in self.point and n not in nodes and full(n.out):
                    nodes.add(n)
                    todo.extend(v for v in n.inputs if v not in done)
            reads = {v for n in nodes | set(reduction) for v in n.inputs if v in done} | (set(wanted) & done)
            passes.append(_Pass(nodes | set(reduction), [] if reduction else stored, by_name(reads)))
            done |= {n.out for n in nodes}
        for i, p in enumerate(passes):
            later = set().union(*(q.reads for q in passes[i + 1:]))
            p.writes = by_name({n.out for n in p.nodes} & later)
        return passes

    def body(self, idx: list[ir.Value], store_reduce: Callable | None, checked: bool) -> None:
        """One iteration: load what the nodes read, compute them in order, store the outputs (in a
        pass over a row of a ROWS kernel, those of the pass, with the row's values known)."""
        b, k, lp = self.b, self.k, self.lp
        orig = lp.originals(b, idx, k.space)
        s = LLVMScalar(b, self.dtype, orig, k.space)
        loads: dict = {}
        step, known = self.part or (_Pass(self.members, [v for v in k.outputs if v is not (self.red and self.red.out)]), {})
        nodes = step.nodes
        vals = dict(known)
        for v in step.reads:  # idx[-1]: the position in the row
            vals[v] = b.load(b.gep(self.buffers[v], [idx[-1]]))
        for n in k.nodes:  # loads first
            if n not in nodes:
                continue
            for v, m in zip(n.inputs, self.maps[n]):
                key = (v, m)
                if key in loads or key in self.indexed or v.producer in self.members and (
                        identity_access(v, m, k.space) or self.part is not None):
                    continue
                if key in self.gathered:
                    fill = element(v, self.point[n].fill)
                    load = (lambda lin, c=element(v, v.const): c) if v.const is not None else \
                        (lambda lin, v=v: b.load(self.at(self.arg_of[v], lin, v)))
                    loads[key] = gather(b, load, v, m, orig, fill, checked)
                elif v.const is None:
                    loads[key] = b.load(self.at(self.arg_of[v], offset(b, idx, lp.squash(access(v, m, self.rank))), v))

        def operand(v: Value, m: tuple) -> ir.Value | None:
            if (v, m) in self.indexed:
                return None  # a row: read below, once the other operands are known
            if (v, m) in loads:
                return loads[v, m]
            if v.const is not None:
                return s.const(v.const) if v.type.is_float else element(v, v.const)
            return vals[v]

        for site, n in enumerate(k.nodes, 1):
            if n not in nodes:
                continue
            ops = [operand(v, m) for v, m in zip(n.inputs, self.maps[n])]
            ops = [self.row(v, m, ops, site, idx) if x is None else x
                   for x, v, m in zip(ops, n.inputs, self.maps[n])]
            if n in self.point:
                vals[n.out] = self.point[n].expr(s, *ops)
            else:
                assert store_reduce is not None
                store_reduce(idx, ops[0])
        for v in step.writes:
            b.store(vals[v], b.gep(self.buffers[v], [idx[-1]]))
        for v in step.stores:
            b.store(vals[v], self.at(self.arg_of[v], offset(b, idx, lp.squash(strides(k.space))), v))

    def innermost(self, idx: list[ir.Value], lo, hi, store_reduce: Callable | None) -> None:
        """The innermost loop over [lo, hi), split as __init__ says."""
        b, lp = self.b, self.lp
        step = lambda checked: lambda i: self.body(idx + [i], store_reduce, checked)
        if not self.split:
            for_range(b, hi, step(True), lo)
            return
        clean = _clean_range(b, self.accesses, lp.groups[-1], lp.originals(b, idx + [_i64(0)], self.k.space),
                             lp.space[-1])
        lo, hi = _i64(lo), _i64(hi)
        a = _smin(b, _smax(b, clean[0], lo), hi)  # lo <= a <= z <= hi
        z = _smin(b, _smax(b, clean[1], a), hi)
        for_range(b, a, step(True), lo, vectorize=False)
        for_range(b, z, step(False), a)
        for_range(b, hi, step(True), z, vectorize=False)

    def run(self, dims: tuple[int, ...], prefix: list[ir.Value], store_reduce: Callable | None,
            ranges: Ranges = ()) -> None:
        """Loops over `dims` after the loop indices `prefix`, ending in the innermost loop."""
        b = self.b
        if self.unrolled:  # no index is computed: no edges to split off
            nest(b, dims, lambda idx: self.body(idx, store_reduce, True), tuple(prefix), ranges, self.unrolled,
                 self.vector)
            return
        if not dims:
            self.body(prefix, store_reduce, True)
            return
        last = (ranges[len(dims) - 1] if len(ranges) >= len(dims) else None) or (0, dims[-1])
        lo, hi = last
        nest(b, dims[:-1], lambda idx: self.innermost(idx, lo, hi, store_reduce), tuple(prefix), ranges)


def _maximum(m: ir.Module, t: ir.Type, dtype: str) -> ir.Function:
    name = f"llvm.maximum.{dtype}"
    return m.globals.get(name) or ir.Function(m, ir.FunctionType(t, [t, t]), name)


def _identity(kind: ReduceKind, t: ir.Type) -> ir.Constant:
    """What a reduction of `kind` starts from."""
    return ir.Constant(t, 0.0 if kind is ReduceKind.SUM else -math.inf)


def _combine(b: ir.IRBuilder, kind: ReduceKind, dtype: str, acc: ir.Value, x: ir.Value) -> ir.Value:
    """acc combined with x by a reduction of `kind`, in memory order (an in-memory reduction's
    element, a block's partial result): a max is IEEE maximum, a NaN in either is the result."""
    if kind is ReduceKind.SUM:
        return b.fadd(acc, x)
    return b.call(_maximum(b.module, acc.type, dtype), [acc, x])


class _Register:
    """A reduction's accumulator in a register (allocas LLVM promotes), started where it is made.
    A sum may be reassociated, so the loop vectorizer keeps partial sums in lanes (the order is
    fixed by the compiled code: every run gives the same bits). A max is two: maxnum of the values,
    free to ignore NaNs and the sign of zero (nnan, nsz: one vmaxps a vector, which the vectorizer
    reduces in lanes; IEEE maximum costs six dependent instructions), and whether any value was a
    NaN, which the max then is: a NaN anywhere in the slice is the result."""

    def __init__(self, b: ir.IRBuilder, kind: ReduceKind, dtype: str) -> None:
        self.b, self.kind, self.t = b, kind, FTYPES[dtype]
        self.maxnum = f"llvm.maxnum.{dtype}"
        with b.goto_entry_block():
            self.acc = b.alloca(self.t)
            self.nan = b.alloca(ir.IntType(1)) if kind is ReduceKind.MAX else None
        self.start()

    def start(self) -> None:
        self.b.store(_identity(self.kind, self.t), self.acc)
        if self.nan is not None:
            self.b.store(ir.Constant(ir.IntType(1), 0), self.nan)

    def add(self, x: ir.Value) -> None:
        b, acc = self.b, self.b.load(self.acc)
        if self.nan is None:
            total = b.fadd(acc, x)
            total.flags.append("reassoc")
            b.store(total, self.acc)
            return
        m = b.module
        fn = m.globals.get(self.maxnum) or ir.Function(m, ir.FunctionType(self.t, [self.t, self.t]), self.maxnum)
        b.store(b.call(fn, [acc, x], fastmath=("nnan", "nsz")), self.acc)
        b.store(b.or_(b.load(self.nan), b.fcmp_unordered("uno", x, x)), self.nan)

    def value(self) -> ir.Value:
        v = self.b.load(self.acc)
        return v if self.nan is None else self.b.select(self.b.load(self.nan), ir.Constant(self.t, math.nan), v)


def chunk_elements(k: Kernel) -> int:
    """Elements of partial rows a column sum in blocks needs beside its output (else 0)."""
    lp = loops(k) if k.kind is KernelKind.REDUCE else None
    return (lp.chunks - 1) * lp.space[-1] if lp and lp.chunks > 1 else 0


def add_chunks(b: ir.IRBuilder, k: Kernel, out: ir.Value, partials: ir.Value) -> None:
    """A column sum in blocks: its output (the first block's row) combined with the other blocks'
    partial rows, in block order, once every block is done."""
    lp = loops(k)
    fold(b, out, partials, lp.chunks, lp.space[-1], _reduction(k).kind, compute_dtype(k))


def fold(b: ir.IRBuilder, out: ir.Value, partials: ir.Value, blocks: int, size: int, kind: ReduceKind,
         dtype: str) -> None:
    """out (the first block's result, `size` elements) combined with the other blocks' results,
    which lie one after another at `partials`, in block order: the same sums whoever computed them."""
    for c in range(1, blocks):
        part = b.gep(partials, [ir.Constant(I64, (c - 1) * size)])
        for_range(b, size, lambda i: b.store(
            _combine(b, kind, dtype, b.load(b.gep(out, [i])), b.load(b.gep(part, [i]))), b.gep(out, [i])))


def _reduce(b, k, lp, red, dtype, run, out, at, ranges, vectorize, partials) -> None:
    """Kept loops outside, reduced loops inside: accumulate in a register, store each output once
    (or, for `in_memory` loops, zero each leading iteration's slice of the output and accumulate
    into it; a column sum, block by block, into its output or a partial row)."""
    t = FTYPES[dtype]
    kind, axes = _reduction(k).kind, _reduction(k).axes
    identity = _identity(kind, t)
    combine = lambda acc, x: _combine(b, kind, dtype, acc, x)

    # the output's stride along each loop (0 along reduced ones): kept axes in order, row-major
    rank = len(k.space)
    kept_axes = [a for a in range(rank) if a not in axes]
    coef = [0] * rank
    for a, st in zip(kept_axes, strides(tuple(k.space[a] for a in kept_axes))):
        coef[a] = st
    out_coef = lp.squash(coef)
    if lp.columns:  # blocks of rows [lo, hi), each into the output (the first) or a partial row
        chunks, rows, width = lp.chunks, lp.space[0], lp.space[-1]
        lo, hi = ranges[0] if ranges else (0, chunks)
        assert chunks == 1 or partials is not None
        const = lambda x: ir.Constant(I64, x)

        def block(c: ir.Value) -> None:
            row = out if chunks == 1 else b.select(b.icmp_signed("==", c, const(0)), out, b.gep(
                partials, [b.mul(b.sub(c, const(1)), const(width))]))
            for_range(b, width, lambda i: b.store(identity, at(row, i)))
            r0, r1 = (b.udiv(b.mul(x, const(rows)), const(chunks)) for x in (c, b.add(c, const(1))))

            def accumulate(idx, x):
                p = at(row, offset(b, idx, out_coef))
                b.store(combine(b.load(p), x), p)
            run(lp.space, [], accumulate, ((r0, r1),) + (None,) * (len(lp.space) - 1))
        for_range(b, hi, block, lo, vectorize=False)
        return
    if lp.in_memory:
        leading = {a for g in lp.groups[:lp.kept] for a in g}
        slice_size = math.prod(k.space[a] for a in kept_axes if a not in leading)

        def accumulate(idx, x):
            p = at(out, offset(b, idx, out_coef))
            b.store(combine(b.load(p), x), p)

        def fill(oidx):
            base = offset(b, oidx, out_coef[:lp.kept])
            for_range(b, slice_size, lambda i: b.store(identity, at(out, b.add(base, i))))
            run(lp.space[lp.kept:], oidx, accumulate)
        nest(b, lp.space[:lp.kept], fill, ranges=ranges)
        return
    acc = _Register(b, kind, dtype)

    def kept(oidx):
        acc.start()
        run(lp.space[lp.kept:], oidx, lambda idx, x: acc.add(x))
        b.store(acc.value(), at(out, offset(b, oidx, out_coef[:lp.kept])))
    nest(b, lp.space[:lp.kept], kept, ranges=ranges, vectorize=vectorize)


def scatter(k: Kernel) -> Scatter:
    """The scatter-add a scatter kernel is."""
    d = lowered(k.nodes[0])
    assert isinstance(d, Scatter), k.nodes[0].op
    return d


def emit_scatter(fn: ir.Function, k: Kernel, arg_of: dict[Value, ir.Value], fault: Fault,
                 cols: tuple[ir.Value, ir.Value] | None = None) -> None:
    """The body of a scatter kernel over the columns [lo, hi) of `cols` (a thread's share; default
    all): zero them in every row, then add each index position's values to its row, positions in
    order. A bad index adds nothing and is reported to `fault`."""
    d, n = scatter(k), k.nodes[0]
    (g, idx), out = n.inputs, arg_of[n.out]
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    lo, hi = cols or (_i64(0), _i64(d.width))
    at = lambda ptr, r, c: b.gep(ptr, [b.add(b.mul(r, _i64(d.width)), c)])
    zero = element(n.out, 0.0)
    for_range(b, d.rows, lambda r: for_range(b, hi, lambda c: b.store(zero, at(out, r, c)), lo))

    def position(i: ir.Value) -> None:
        r = b.sext(b.load(b.gep(arg_of[idx], [i])), I64)
        with b.if_else(b.icmp_unsigned("<", r, _i64(d.rows))) as (good, bad):  # negative: huge
            with good:
                for_range(b, hi, lambda c: b.store(b.fadd(b.load(at(out, r, c)), b.load(at(arg_of[g], i, c))),
                                                   at(out, r, c)), lo)
            with bad:
                fault.report(b, 1, r, d.rows)
    for_range(b, d.positions, position)
    b.ret_void()
