"""Loop nests for fused kernels: elementwise chains and reductions with their elementwise prologue.

Per iteration every external operand is loaded first, the members' scalar expressions are computed
in order, and stored values are written last, so an in-place update (W <- W - lr*dW) reads the old
element before writing the new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from graphc.codegen.scalar import FTYPES, LLTYPES, LLVMScalar
from graphc.ir.graph import Value
from graphc.ops import REGISTRY
from graphc.ops.lowering import Affine
from graphc.ops.registry import norm_axes
from graphc.passes.fuse import Kernel, identity_access, input_maps

I64 = ir.IntType(64)


def for_range(b: ir.IRBuilder, n: int | ir.Value, body: Callable[[ir.Value], None],
              start: int | ir.Value = 0) -> None:
    """for i in [start, n): body(i)"""
    as_value = lambda x: x if isinstance(x, ir.Value) else ir.Constant(I64, x)
    pre = b.block
    cond = b.append_basic_block("for.cond")
    blk = b.append_basic_block("for.body")
    end = b.append_basic_block("for.end")
    b.branch(cond)
    b.position_at_end(cond)
    i = b.phi(I64)
    i.add_incoming(as_value(start), pre)
    b.cbranch(b.icmp_signed("<", i, as_value(n)), blk, end)
    b.position_at_end(blk)
    body(i)
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
    b.branch(cond)
    b.position_at_end(end)


def nest(b: ir.IRBuilder, dims: tuple[int, ...], body: Callable[[list[ir.Value]], None],
         idx: tuple = (), outer: tuple[ir.Value, ir.Value] | None = None) -> None:
    """Loops over `dims`; `outer` = (lo, hi) restricts the outermost one (a thread's share)."""
    if not dims:
        body(list(idx))
        return
    lo, hi = outer or (0, dims[0])
    for_range(b, hi, lambda i: nest(b, dims[1:], body, idx + (i,)), lo)


def strides(shape: tuple[int, ...]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def offset(b: ir.IRBuilder, idx: list[ir.Value], coef: list[int]) -> ir.Value:
    total = ir.Constant(I64, 0)
    for i, c in zip(idx, coef):
        if c:
            total = b.add(total, b.mul(i, ir.Constant(I64, c)))
    return total


def access(v: Value, m: tuple, rank: int) -> list[int]:
    """Per iteration axis: the element stride of `v` along it (0 where v is broadcast)."""
    coef = [0] * rank
    for axis, s in zip(m, strides(tuple(v.shape))):
        if axis is not None:
            coef[axis] += s
    return coef


def gather(b: ir.IRBuilder, at: Callable, ptr: ir.Value, v: Value, m: tuple, idx: list[ir.Value],
           fill: ir.Value) -> ir.Value:
    """Load `v` through a map with `Affine` axes: compute each such index, and read `fill` where it
    falls outside `v` (the load itself always uses a valid address)."""
    c = lambda x: ir.Constant(I64, x)
    ok = ir.Constant(ir.IntType(1), 1)
    lin = c(0)
    for a, size, stride in zip(m, v.shape, strides(tuple(v.shape))):
        if a is None:
            continue
        if isinstance(a, Affine):
            t = c(a.offset)
            for axis, coef in a.terms:
                t = b.add(t, b.mul(idx[axis], c(coef)))
            if a.div != 1:
                q = b.sdiv(t, c(a.div))
                ok = b.and_(ok, b.icmp_signed("==", b.mul(q, c(a.div)), t))
                t = q
            ok = b.and_(ok, b.and_(b.icmp_signed(">=", t, c(0)), b.icmp_signed("<", t, c(size))))
        else:
            t = idx[a]
        lin = b.add(lin, b.mul(t, c(stride)))
    x = b.load(at(ptr, b.select(ok, lin, c(0)), v))
    return b.select(ok, x, fill)


def compute_dtype(k: Kernel) -> str:
    return next((n.out.dtype for n in k.nodes if n.out.type.is_float), "f32")


@dataclass(frozen=True)
class Loops:
    """A kernel's loop nest. A reduction runs its kept axes outermost (each output element is finished
    in a register, and threads can split the outer loop) unless its innermost axis is kept (a column
    sum): then the axes stay in memory order and whole rows accumulate in the output, vectorized.
    Adjacent axes merge into one loop wherever every memory access walks them as one (a whole
    elementwise chain: one flat loop)."""

    groups: tuple[tuple[int, ...], ...]  # the iteration-space axes each loop runs over
    space: tuple[int, ...]               # trip counts
    kept: int                            # outer loops over kept axes, finished in a register
    in_memory: bool = False              # a reduction accumulates in its output, in memory order

    def squash(self, coef: list[int]) -> list[int]:
        """Per-axis strides -> per-loop strides (a merged group moves like its innermost axis)."""
        return [coef[g[-1]] for g in self.groups]

    def originals(self, b: ir.IRBuilder, idx: list[ir.Value], shape: tuple[int, ...]) -> list[ir.Value]:
        """Per iteration-space axis, its index (the optimizer drops the ones nothing uses)."""
        out: list[ir.Value] = [None] * len(shape)
        for i, g in zip(idx, self.groups):
            inner = math.prod(shape[a] for a in g)
            for a in g:
                inner //= shape[a]
                q = b.udiv(i, ir.Constant(I64, inner)) if inner > 1 else i
                out[a] = b.urem(q, ir.Constant(I64, shape[a])) if a != g[0] else q
        return out


def loops(k: Kernel) -> Loops:
    rank = len(k.space)
    coefs, pinned = [strides(k.space)], set()
    for n in k.nodes:
        for v, m in zip(n.inputs, input_maps(n)):
            if v.const is None and any(isinstance(a, Affine) for a in m):
                # computed indices keep their own loops
                pinned |= {a for a in m if isinstance(a, int)}
                pinned |= {ax for a in m if isinstance(a, Affine) for ax, _ in a.terms}
            elif v.const is None:
                coefs.append(access(v, m, rank))
    reduced = set(norm_axes(k.nodes[-1].attrs["axes"], rank)) if k.kind == "reduce" else set()
    inner_kept = bool(reduced) and rank - 1 not in reduced
    order = list(range(rank)) if inner_kept else [a for a in range(rank) if a not in reduced] + sorted(reduced)
    groups: list[list[int]] = []
    for a in order:
        p = groups[-1][-1] if groups else None
        if (p is not None and p == a - 1 and not {p, a} & pinned and (p in reduced) == (a in reduced)
                and all(c[p] == c[a] * k.space[a] for c in coefs)):
            groups[-1].append(a)
        else:
            groups.append([a])
    # leading kept loops; none when accumulating in memory (every thread would zero the whole output)
    kept = 0 if inner_kept else next((i for i, g in enumerate(groups) if g[0] in reduced), len(groups))
    return Loops(tuple(map(tuple, groups)), tuple(math.prod(k.space[a] for a in g) for g in groups),
                 kept, inner_kept)


def emit_loop_kernel(fn: ir.Function, k: Kernel, arg_of: dict[Value, ir.Value],
                     outer: tuple[ir.Value, ir.Value] | None = None,
                     fault: tuple[ir.Value, int] | None = None) -> None:
    """The body of an elementwise or reduce kernel; `arg_of` maps stored/loaded values to pointers;
    `outer` = (lo, hi) runs only that range of the outermost loop (a thread's share; for a
    reduction, the outermost kept loop). With `fault` = (pointer, kernel index), every access is
    bounds-checked: an offset outside its value is not made, and index + 1 is written to *pointer."""
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dtype = compute_dtype(k)
    members = set(k.nodes)
    maps = {n: input_maps(n) for n in k.nodes}
    rank = len(k.space)
    red = k.nodes[-1] if k.kind == "reduce" else None
    lp = loops(k)

    def at(ptr: ir.Value, off: ir.Value, v: Value) -> ir.Value:
        """The address of element `off` of value `v` (checked against v's size in a bounds build)."""
        if fault is None:
            return b.gep(ptr, [off])
        zero = ir.Constant(I64, 0)
        ok = b.and_(b.icmp_signed(">=", off, zero), b.icmp_signed("<", off, ir.Constant(I64, math.prod(v.shape))))
        with b.if_then(b.not_(ok), likely=False):
            b.store(ir.Constant(I64, fault[1] + 1), b.bitcast(fault[0], I64.as_pointer()))
        return b.gep(ptr, [b.select(ok, off, zero)])

    def body(idx: list[ir.Value], store_reduce: Callable | None) -> None:
        orig = lp.originals(b, idx, k.space)
        s = LLVMScalar(b, dtype, orig, k.space)
        loads, vals = {}, {}
        for n in k.nodes:  # loads first
            for v, m in zip(n.inputs, maps[n]):
                if v.const is None and not (v.producer in members and identity_access(v, m, k.space)):
                    key = (v, m)
                    if key in loads:
                        continue
                    if any(isinstance(a, Affine) for a in m):
                        f = REGISTRY[n.op].lower.fill(n.attrs)
                        fill = ir.Constant(LLTYPES[v.dtype], f if v.type.is_float else int(f))
                        loads[key] = gather(b, at, arg_of[v], v, m, orig, fill)
                    else:
                        loads[key] = b.load(at(arg_of[v], offset(b, idx, lp.squash(access(v, m, rank))), v))
        for n in k.nodes:
            ops = [s.const(v.const) if v.const is not None else loads.get((v, m)) or vals[v]
                   for v, m in zip(n.inputs, maps[n])]
            if n is red:
                store_reduce(ops[0])
            else:
                vals[n.out] = REGISTRY[n.op].lower.expr(s, *ops, **n.attrs)
        for v in k.outputs:
            if v is not (red.out if red else None):
                b.store(vals[v], at(arg_of[v], offset(b, idx, lp.squash(strides(k.space))), v))

    if red is None:
        nest(b, lp.space, lambda idx: body(idx, None), outer=outer)
    else:
        _reduce(b, k, lp, red, dtype, body, lambda off: at(arg_of[red.out], off, red.out), outer)
    b.ret_void()


def _reduce(b, k, lp, red, dtype, body, out_at, outer) -> None:
    """Kept loops outside, reduced loops inside: accumulate in a register, store each output once
    (or, for `in_memory` loops, accumulate into the zeroed output)."""
    t = FTYPES[dtype]
    kind = REGISTRY[red.op].lower.kind
    identity = ir.Constant(t, 0.0 if kind == "sum" else -math.inf)

    def combine(acc, x):
        if kind == "sum":
            return b.fadd(acc, x)
        return b.select(b.fcmp_unordered(">", x, acc), x, acc)  # NaN propagates

    # the output's stride along each loop (0 along reduced ones): kept axes in order, row-major
    rank = len(k.space)
    kept_axes = [a for a in range(rank) if a not in norm_axes(red.attrs["axes"], rank)]
    coef = [0] * rank
    for a, st in zip(kept_axes, strides(tuple(k.space[a] for a in kept_axes))):
        coef[a] = st
    out_coef = lp.squash(coef)
    if lp.in_memory:
        for_range(b, math.prod(k.space[a] for a in kept_axes), lambda i: b.store(identity, out_at(i)))

        def rmw(idx):
            def accumulate(x):
                p = out_at(offset(b, idx, out_coef))
                b.store(combine(b.load(p), x), p)
            body(idx, accumulate)
        nest(b, lp.space, rmw)
        return
    with b.goto_entry_block():
        acc = b.alloca(t)

    def kept(oidx):
        b.store(identity, acc)
        nest(b, lp.space[lp.kept:],
             lambda iidx: body(oidx + iidx, lambda x: b.store(combine(b.load(acc), x), acc)))
        b.store(b.load(acc), out_at(offset(b, oidx, out_coef[:lp.kept])))
    nest(b, lp.space[:lp.kept], kept, outer=outer)
