"""Assembles a Schedule into one LLVM module: a function per kernel and one step entry point.

The entry `void NAME(i8** table)` runs every kernel in order; table[i] is the base pointer of the
plan's buffer i (inputs, params, state, outputs, arena), so no Python runs between kernels. Each
kernel is a function of its buffers' pointers, run through a task, task(arg, tid, nt), that unpacks
them from a struct the step fills: the step calls it, or posts it to the worker pool. Tasks are
never inlined into the step, and kernels with the same code (a repeated layer's) share one
function, so LLVM's work grows with the distinct kernels, not with the model (see `_task`). The
slots after the buffers are named by `table_slots`: the GEMMs' packing scratch (`scratch_bytes`);
with threads > 1 the worker pool's `run` function and its state: a large kernel (GEMM or loop
nest) becomes fn(ptrs..., tid, nt) computing thread tid's share, posted to the pool; in a
profiling build an i64 array where each kernel adds the CPU cycles it took (`graphc profile`);
where a kernel reads or writes at indices taken from data (a gather, a scatter), or in a
bounds-checked build (`--check-bounds`, every loop-kernel access), `fault`: four i64 where the
first bad index is reported (kernels.Fault) for the runtime to raise after the call; then, per
external call, `extern:<slot>`: the address of a pair {fn, user} the runtime binds, and the kernel
calls fn(user, data, count, dtype) (EXTERN_FN). The generated code keeps no state of its own: everything it writes is reached
through the table.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from graphc.codegen.gemm import (ELEMENT_BYTES, define_gemm, gemm_blocking,
                                 scratch_bytes as gemm_scratch_bytes)
from graphc.codegen.pool import RUN, TASK, flush_denormals, restore_fp_control, share
from graphc.codegen.kernels import (Fault, Partials, add_chunks, chunk_elements, emit_loop_kernel, emit_scatter,
                                    fold, for_range, loops, scatter)
from graphc.codegen.scalar import LLTYPES
from graphc.codegen.target import Target
from graphc.ir.graph import DTYPES, Node, Value
from graphc.ops.lowering import Contraction, Extern, ReduceKind, View
from graphc.ops.registry import lowered
from graphc.passes.fuse import LOOPS, Kernel, KernelKind
from graphc.passes.memory import Plan, nbytes, pack_offsets
from graphc.passes.pipeline import Schedule, loop

I8P = ir.IntType(8).as_pointer()
I64, I32 = ir.IntType(64), ir.IntType(32)
# (user, data, element count, dtype's index in DTYPES)
EXTERN_FN = ir.FunctionType(ir.VoidType(), [I8P, I8P, I64, I32])
# a block of C: (lo, hi) of its rows (C's leading axes as one), of its columns; None where whole
Block = tuple[tuple[ir.Value, ir.Value] | None, tuple[ir.Value, ir.Value] | None]
LINE_BYTES = 64  # a scatter's column shares are whole cache lines: threads never write one line



def table_slots(s: Schedule, threads: int, profile: bool = False, check_bounds: bool = False) -> list[str]:
    """The names of the table's slots after the plan's buffers, in order (see module doc); a loop's
    body is run with a table of its own buffers followed by the same slots."""
    every = s.every_kernel()
    fault = check_bounds or any(k.indexes_data for k in every)
    externs = dict.fromkeys(_extern_slot(k) for k in every if k.kind is KernelKind.EXTERN)
    return (["scratch"] + (["pool_run", "pool"] if threads > 1 else []) + (["cycles"] if profile else [])
            + (["fault"] if fault else []) + list(externs))


def _extern_slot(k: Kernel) -> str:
    """The table slot holding the function an extern kernel calls."""
    d = lowered(k.nodes[0])
    assert isinstance(d, Extern), k.nodes[0].op
    return f"extern:{d.slot}"


def scratch_bytes(s: Schedule, target: Target, threads: int) -> int:
    """Bytes the table's "scratch" slot must point to (64-byte aligned): a slot per thread for GEMM
    packing, the partial results of a kernel summed in blocks, then the work space of the loops
    (`_Work`)."""
    return _fixed_bytes(s, target, threads) + _work_bytes(s)


def _fixed_bytes(s: Schedule, target: Target, threads: int) -> int:
    """The scratch before the loops' work space: the GEMMs' slots, then the partial results."""
    return _gemm_bytes(s, target, threads) + _aligned(max((_partial_bytes(k, target) for k in s.every_kernel()),
                                                          default=0))


def _gemm_bytes(s: Schedule, target: Target, threads: int) -> int:
    return _aligned(threads * max((gemm_scratch_bytes(target, k.nodes[0].out.dtype)
                                   for k in s.every_kernel() if k.kind is KernelKind.CONTRACT), default=0))


def _partial_bytes(k: Kernel, target: Target) -> int:
    """Bytes of the partial results kernel `k` leaves beside its output when it sums in blocks: a
    GEMM's K blocks (`_k_blocks`), a column sum's row blocks (`Loops.chunks`)."""
    if k.kind is KernelKind.CONTRACT:
        c = _gemm(k.nodes[0])
        return (_k_blocks(k.nodes[0], target) - 1) * c.m * c.n * ELEMENT_BYTES[k.nodes[0].out.dtype]
    return chunk_elements(k) * ELEMENT_BYTES[k.nodes[-1].out.dtype]


def _aligned(n: int) -> int:
    return -(-n // LINE_BYTES) * LINE_BYTES


@dataclass(frozen=True)
class _Work:
    """Where a scan kernel keeps, from its work space's start: its body's arena (at 0), two buffers
    per carry (the step reads one and writes the other), a buffer for each per-step value no node
    stores, then the work space of the loops in its body."""

    carries: tuple[tuple[int, int], ...]
    unstored: dict[int, int]  # result index -> offset
    nested: int
    size: int


def _work(k: Kernel, body: Schedule) -> _Work:
    lp = loop(k)
    outs = list(lp.body.outputs.values())
    at = _aligned(body.plan.arena_bytes)
    carries = []
    for v in outs[:lp.carries]:
        carries.append((at, at + _aligned(nbytes(v))))
        at += 2 * _aligned(nbytes(v))
    stored = {n.attrs["result"] for n in k.nodes}
    unstored = {}
    for r in range(lp.carries, len(outs)):
        if r not in stored:
            unstored[r] = at
            at += _aligned(nbytes(outs[r]))
    return _Work(tuple(carries), unstored, at, at + _work_bytes(body))


def _work_bytes(s: Schedule) -> int:
    """The work space the loops of `s` need (they run one after another: they share it)."""
    return max((_work(s.kernels[i], body).size for i, body in s.bodies.items()), default=0)


def build_module(s: Schedule, target: Target, entry: str = "graphc_step", threads: int = 1,
                 profile: bool = False, check_bounds: bool = False) -> ir.Module:
    m = ir.Module(name=s.graph.name)
    m.triple = target.triple
    _Steps(m, s, target, threads, profile, check_bounds).define(s, entry, 0, _fixed_bytes(s, target, threads))
    return m


class _Steps:
    """Defines a schedule's step function `void f(i8** table)`, and one for each loop body it runs.
    Kernels are numbered as `Schedule.every_kernel` lists them (faults and profiles name them)."""

    def __init__(self, m: ir.Module, root: Schedule, target: Target, threads: int, profile: bool,
                 check_bounds: bool) -> None:
        self.m, self.target, self.threads, self.profile, self.check_bounds = m, target, threads, profile, check_bounds
        self.names = table_slots(root, threads, profile, check_bounds)
        self.partials = _gemm_bytes(root, target, threads)  # where in the scratch partial results go
        self.by_code: dict[str, ir.Function] = {}  # a kernel function's code (see `unique`) -> it

    def define(self, s: Schedule, name: str, first: int, work: int) -> ir.Function:
        """The step of `s`, whose kernels are numbered from `first` and whose loops work at byte
        `work` of the scratch slot."""
        m, target, threads = self.m, self.target, self.threads
        step = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P.as_pointer()]), name)
        top = first == 0
        if not top:
            step.linkage = "internal"
        b = ir.IRBuilder(step.append_basic_block("entry"))
        table = step.args[0]
        control = flush_denormals(b, target) if top else None
        bases = [b.load(b.gep(table, [ir.Constant(I64, i)])) for i in range(len(s.plan.buffers))]
        slot = {name: b.load(b.gep(table, [ir.Constant(I64, len(bases) + i)]))
                for i, name in enumerate(self.names)}
        run = b.bitcast(slot["pool_run"], RUN.as_pointer()) if threads > 1 else None
        # where the step leaves a task its pointers: one place for all, the kernels run one at a time
        width = max((len(_distinct(k, s.plan.place)) + len(self._extra(k)) for k in s.kernels), default=0)
        task_arg = b.alloca(I8P, width)
        cycles = None
        if self.profile:
            cycles = b.bitcast(slot["cycles"], I64.as_pointer())
            clock = m.declare_intrinsic("llvm.readcyclecounter", (), ir.FunctionType(I64, []))

        def pointer(v: Value) -> ir.Value:
            buf, off = s.plan.place[v]
            p = b.gep(bases[buf], [ir.Constant(I64, off)]) if off else bases[buf]
            return b.bitcast(p, LLTYPES[v.dtype].as_pointer())

        nested = first + len(s.kernels)  # the number of the first kernel of the next body
        for i, k in enumerate(s.kernels):
            number = first + i
            start = b.call(clock, []) if cycles else None
            if k.kind is KernelKind.SCAN:
                body = s.bodies[i]
                fn = self.define(body, f"{name}_loop{i}", nested, work + _work(k, body).nested)
                nested += len(body.every_kernel())
                _emit_scan(b, k, body, fn, pointer, slot, self.names, work)
            elif k.kind is KernelKind.VIEW and k.outputs[0] in s.plan.aliased:
                continue  # the view shares its source's buffer: nothing to run
            else:
                self._kernel(b, s, k, number, pointer, slot, run, task_arg)
            if cycles:
                total = b.gep(cycles, [ir.Constant(I64, number)])
                b.store(b.add(b.load(total), b.sub(b.call(clock, []), start)), total)
        if control is not None:
            restore_fp_control(b, target, control)
        b.ret_void()
        return step

    def unique(self, fn: ir.Function) -> ir.Function:
        """`fn`, or the earlier kernel function with the same code, which replaces it (`fn` is then
        dropped from the module). The code is compared as LLVM IR text but for the name: only a
        function that is the same instruction for instruction, arguments and attributes included,
        is shared."""
        code = str(fn).replace(fn.get_reference(), "@", 1)
        if code in self.by_code:
            del self.m.globals[fn.name]  # nothing refers to it yet
            return self.by_code[code]
        self.by_code[code] = fn
        return fn

    def _checked(self, k: Kernel) -> bool:
        """Kernel `k` checks the indices of its accesses (a bounds-checked build)."""
        return self.check_bounds and (k.kind in LOOPS or _epilogue(k) is not None)

    def _extra(self, k: Kernel) -> list[str]:
        """The table slots kernel `k`'s function takes after its buffers' pointers: the fault slot
        where indices come from data or loops are checked, a GEMM's scratch, an extern kernel's
        function."""
        return ([name for name, used in (("fault", self._checked(k) or k.indexes_data),
                                         ("scratch", k.kind is KernelKind.CONTRACT or chunk_elements(k) > 0))
                 if used]
                + ([_extern_slot(k)] if k.kind is KernelKind.EXTERN else []))

    def _kernel(self, b: ir.IRBuilder, s: Schedule, k: Kernel, number: int, pointer: Callable[[Value], ir.Value],
                slot: dict[str, ir.Value], run: ir.Value | None, task_arg: ir.Value) -> None:
        """Define kernel `k`'s function and call it (or post it to the pool) from the step, its
        pointers passed in `task_arg`."""
        m, target, threads = self.m, self.target, self.threads
        args = _distinct(k, s.plan.place)
        parallel = run is not None and _worth_splitting(k, target)
        checked = self._checked(k)
        faults = checked or k.indexes_data
        extra = [slot[name] for name in self._extra(k)]
        types = ([LLTYPES[v.dtype].as_pointer() for v in args] + [I8P] * len(extra)
                 + ([I64, I64] if parallel else []))
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), types), f"k{number}_{k.name}")
        fn.linkage = "internal"
        apart = _apart(k, s.plan.place)
        for a, v in zip(fn.args, args):
            if v in apart:
                a.add_attribute("noalias")
        arg_of = {v: fn.args[args.index(_first(args, v, s.plan.place))] for v in k.inputs + k.outputs}
        ptrs = [pointer(v) for v in args] + extra
        fault = Fault(fn.args[len(args)], number, checked) if faults else None
        # a kernel summed in blocks: where in the scratch the blocks after the first leave theirs
        summed = _partial_bytes(k, target) > 0
        partials = (fn.args[len(args) + self._extra(k).index("scratch")], self.partials) if summed else None
        # built from fn's own arguments, before fn may give way to its twin
        finish = _finish(m, fn, k, arg_of, target, fault, parallel, partials)
        if parallel:
            assert run is not None
            _emit_share(m, fn, k, arg_of, target, threads, fault, partials)
            _post(b, run, slot["pool"], _task(self.unique(fn), share=True), task_arg, ptrs, threads)
        else:
            _emit_kernel(m, fn, k, arg_of, target, fault, s.plan, partials)
            _call(b, _task(self.unique(fn)), task_arg, ptrs)
        if finish is not None:
            _call(b, _task(self.unique(finish)), task_arg, ptrs)


def _emit_scan(b: ir.IRBuilder, k: Kernel, body: Schedule, step: ir.Function,
               pointer: Callable[[Value], ir.Value], slot: dict[str, ir.Value], names: list[str],
               work: int) -> None:
    """Run a scan kernel: for each step t (counting down where reverse), fill the body's table
    (the carries it starts from, step t of each sequence, the invariants, where its outputs go)
    and call its step; outputs the body's plan keeps elsewhere (a carry passed through, a y that
    is the new carry) are copied where they belong. The final carries are copied out at the end."""
    lp, w = loop(k), _work(k, body)
    plan, g = body.plan, body.graph
    outs = list(g.outputs.values())
    steps = k.nodes[0].inputs[lp.carries].dims[0]
    base = b.gep(slot["scratch"], [ir.Constant(I64, work)])
    at = lambda off: b.gep(base, [ir.Constant(I64, off)])
    stored = {n.attrs["result"]: b.bitcast(pointer(n.out), I8P) for n in k.nodes}
    operand = [b.bitcast(pointer(v), I8P) for v in k.nodes[0].inputs]  # no literal: materialized
    table = b.alloca(I8P, len(plan.buffers) + len(names))
    put = lambda i, p: b.store(p, b.gep(table, [ir.Constant(I64, i)]))
    for i, name in enumerate(names):
        put(len(plan.buffers) + i, slot[name])
    current = b.alloca(I8P, max(lp.carries, 1))  # the carries the next step starts from
    for c in range(lp.carries):
        b.store(operand[c], b.gep(current, [ir.Constant(I64, c)]))
    out_names = list(g.outputs)

    def step_at(t: ir.Value) -> None:
        t = b.sub(ir.Constant(I64, steps - 1), t) if lp.reverse else t
        odd = b.trunc(t, ir.IntType(1))
        ptr: dict[int, ir.Value] = {}  # body buffer -> its address this step
        for j, inp in enumerate(g.inputs):
            if j < lp.carries:
                ptr[j] = b.load(b.gep(current, [ir.Constant(I64, j)]))
            elif j < lp.carries + lp.xs:
                v = inp.value
                ptr[j] = b.gep(operand[j], [b.mul(t, ir.Constant(I64, nbytes(v)))])
            else:
                ptr[j] = operand[j]
        dest = {}
        for r, v in enumerate(outs):
            if r < lp.carries:
                even, odd_at = w.carries[r]
                dest[r] = b.select(odd, at(odd_at), at(even))
            elif r in stored:  # step t of the stacked result
                dest[r] = b.gep(stored[r], [b.mul(t, ir.Constant(I64, nbytes(v)))])
            else:
                dest[r] = at(w.unstored[r])
        for j, buf in enumerate(plan.buffers):
            if buf.role == "output":
                ptr[j] = dest[out_names.index(buf.name)]
            elif buf.role == "arena":
                ptr[j] = at(0)
        for j, p in ptr.items():
            put(j, p)
        b.call(step, [table])
        for r, v in enumerate(outs):
            j, off = plan.place[v]
            if plan.buffers[j].role != "output" or plan.buffers[j].name != out_names[r]:
                src = b.gep(ptr[j], [ir.Constant(I64, off)]) if off else ptr[j]
                _copy(b, src, dest[r], nbytes(v))
        for c in range(lp.carries):
            b.store(dest[c], b.gep(current, [ir.Constant(I64, c)]))

    for_range(b, steps, step_at, vectorize=False)
    for r in range(lp.carries):
        if r in stored:
            _copy(b, b.load(b.gep(current, [ir.Constant(I64, r)])), stored[r], nbytes(outs[r]))


def _copy(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, size: int) -> None:
    memcpy = b.module.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    b.call(memcpy, [dst, src, ir.Constant(I64, size), ir.Constant(ir.IntType(1), 0)])


def _apart(k: Kernel, place: dict) -> set[Value]:
    """The values of kernel `k` whose bytes no other of its values touches (at the same place, or
    overlapping: a pack's operands lie inside its output): their pointers are noalias."""
    vs = set(k.inputs + k.outputs)
    span = {v: (place[v][0], place[v][1], place[v][1] + nbytes(v)) for v in vs}
    return {v for v in vs if not any(u is not v and span[u][0] == span[v][0] and span[u][1] < span[v][2]
                                     and span[v][1] < span[u][2] for u in vs)}


def _first(args: list[Value], v: Value, place: dict) -> Value:
    return next(a for a in args if place[a] == place[v])


def _distinct(k: Kernel, place: dict) -> list[Value]:
    """One pointer argument per distinct buffer location the kernel touches."""
    out: list[Value] = []
    for v in k.inputs + k.outputs:
        if all(place[a] != place[v] for a in out):
            out.append(v)
    return out


def _emit_kernel(m: ir.Module, fn: ir.Function, k: Kernel, arg_of: dict, target: Target,
                 fault: Fault | None, plan: Plan, partials: Partials) -> None:
    if k.kind in LOOPS:
        emit_loop_kernel(fn, k, arg_of, fault=fault, partials=partials)
        return
    if k.kind is KernelKind.SCATTER:
        assert fault is not None
        emit_scatter(fn, k, arg_of, fault)
        return
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n = k.nodes[0]
    if k.kind is KernelKind.CONTRACT:
        c = _gemm(n)
        gemm = define_gemm(m, target, n.out.dtype, c.ta, c.tb, (c.m, c.n), c.k)
        call = lambda args: b.call(gemm, args + [ir.Constant(I32, 0), fn.args[-1]])
        blocks = _k_blocks(n, target)
        if blocks > 1:  # every block, one after another; the epilogue runs on the summed C
            assert partials is not None
            _k_block_range(b, n, target, _gemm_args(n, arg_of), partials, ir.Constant(I64, 0),
                           ir.Constant(I64, blocks), call)
            b.ret_void()
            return
        _each_product(b, c, _gemm_args(n, arg_of), 0, c.count, call)
        _then_epilogue(b, fn, k, arg_of, (None, None), fault)
        return
    if k.kind is KernelKind.PACK:  # the operands the memory plan could not put in place
        buf, at = plan.place[n.out]
        for v, offset in zip(n.inputs, pack_offsets(k)):
            if plan.place[v] != (buf, at + offset):
                _copy(b, b.bitcast(arg_of[v], I8P), b.gep(b.bitcast(arg_of[n.out], I8P), [ir.Constant(I64, offset)]),
                      nbytes(v))
        b.ret_void()
        return
    # a view whose result lives elsewhere (a graph output), or an external call's copy to update
    src, dst, count = arg_of[n.inputs[0]], arg_of[n.out], math.prod(n.out.shape)
    view = lowered(n)
    if isinstance(view, View) and view.offset:
        src = b.gep(src, [ir.Constant(I64, view.offset)])
    if src is not dst:
        for_range(b, count, lambda i: b.store(b.load(b.gep(src, [i])), b.gep(dst, [i])))
    if k.kind is KernelKind.EXTERN:  # the slot points to {fn, user}
        pair = b.bitcast(fn.args[-1], I8P.as_pointer())
        callee = b.bitcast(b.load(pair), EXTERN_FN.as_pointer())
        b.call(callee, [b.load(b.gep(pair, [ir.Constant(I64, 1)])), b.bitcast(dst, I8P),
                        ir.Constant(I64, count), ir.Constant(I32, DTYPES.index(n.out.dtype))])
    b.ret_void()


def _gemm(n: Node) -> Contraction:
    """The contraction a contract kernel's first node is."""
    d = lowered(n)
    assert isinstance(d, Contraction), n.op
    return d


def _gemm_args(n: Node, arg_of: dict) -> list[ir.Value]:
    """The GEMM call's (M, N, K, A, lda, B, ldb, C, ldc) for a contraction node."""
    (a, w), c = n.inputs, _gemm(n)
    i64 = lambda x: ir.Constant(I64, x)
    return [i64(c.m), i64(c.n), i64(c.k), arg_of[a], i64(c.lda), arg_of[w], i64(c.ldb), arg_of[n.out], i64(c.n)]



def _each_product(b: ir.IRBuilder, c: Contraction, args: list[ir.Value], lo: int | ir.Value,
                  hi: int | ir.Value, call: Callable[[list[ir.Value]], object]) -> None:
    """call(GEMM args) for products [lo, hi) of a batched contraction (the one product without
    batch axes): A, B and C moved to each product's offsets, its batch index split over the axes."""
    if not c.batch:
        call(args)
        return
    M, N, K, A, lda, B, ldb, C, ldc = args

    def product(t: ir.Value) -> None:
        offsets = [ir.Constant(I64, 0)] * 3
        inner = c.count
        for size, *strides in c.batch:
            inner //= size
            i = b.urem(b.udiv(t, ir.Constant(I64, inner)), ir.Constant(I64, size))
            offsets = [b.add(o, b.mul(i, ir.Constant(I64, s))) for o, s in zip(offsets, strides)]
        a, w, out = (b.gep(p, [o]) for p, o in zip((A, B, C), offsets))
        call([M, N, K, a, lda, w, ldb, out, ldc])
    for_range(b, hi, product, lo)


def _worth_splitting(k: Kernel, target: Target) -> bool:
    tune = target.tuning
    if k.kind is KernelKind.CONTRACT:
        return _gemm(k.nodes[0]).macs >= tune.parallel_macs
    if k.kind is KernelKind.SCATTER:  # threads split the columns, each at least a cache line
        d = scatter(k)
        return d.positions * d.width >= tune.parallel_iterations and d.width >= 2 * _line(k)
    # loop kernels split their outermost loop (for a reduction, a kept one: outputs stay disjoint),
    # a column sum its blocks of rows
    lp = loops(k) if k.kind in LOOPS else None
    return (lp is not None and math.prod(k.space) >= tune.parallel_iterations
            and (lp.kept > 0 or lp.chunks > 1))


def _line(k: Kernel) -> int:
    """Elements of a kernel's output per cache line."""
    return LINE_BYTES // ELEMENT_BYTES[k.nodes[0].out.dtype]


def _emit_share(m: ir.Module, fn: ir.Function, k: Kernel, arg_of: dict, target: Target,
                threads: int, fault: Fault | None = None, partials: Partials = None) -> None:
    """The body of a split kernel fn(ptrs..., [scratch,] tid, nt): thread tid's share of the work."""
    tid, nt = fn.args[-2:]
    if k.kind is KernelKind.CONTRACT:
        _GemmShare(m, fn, k, arg_of, target, threads, partials).emit(fault)
        return
    b = ir.IRBuilder(fn.append_basic_block("share"))
    if k.kind is KernelKind.SCATTER:  # columns, never index positions: no two threads add into one element
        assert fault is not None
        emit_scatter(fn, k, arg_of, fault, share(b, ir.Constant(I64, scatter(k).width), tid, nt, _line(k)))
    else:  # the outermost loop (for a reduction, a kept one: outputs stay disjoint), or a column sum's blocks
        lp = loops(k)
        ranges = (share(b, ir.Constant(I64, lp.chunks if lp.columns else lp.space[0]), tid, nt),)
        emit_loop_kernel(fn, k, arg_of, ranges=ranges, fault=fault, partials=partials)
    b.position_at_end(b.block)  # after any alloca the loop nest hoisted into this block
    b.branch(fn.blocks[1])  # into the loop nest's own entry block


class _GemmShare:
    """A thread's share of a GEMM, in one of three ways. Each thread packs all of A for a column
    share and all of B for a row share, so the split duplicates the smaller operand's packing;
    when C is small both ways, K is shared instead."""

    def __init__(self, m: ir.Module, fn: ir.Function, k: Kernel, arg_of: dict, target: Target,
                 threads: int, partials: Partials) -> None:
        self.fn, self.k, self.arg_of, self.target, self.threads = fn, k, arg_of, target, threads
        self.partials = partials
        self.n, self.g = k.nodes[0], _gemm(k.nodes[0])
        self.args = _gemm_args(self.n, arg_of)
        self.dtype = self.n.out.dtype
        self.rng = m.globals[define_gemm(m, target, self.dtype, self.g.ta, self.g.tb, (self.g.m, self.g.n),
                                         self.g.k).name + "_range"]
        self.blk = _blocking(self.n, target)
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.tid, self.nt = fn.args[-2:]
        self.scratch = self.b.gep(fn.args[-3], [self.b.mul(self.tid, ir.Constant(I64, gemm_scratch_bytes(target, self.dtype)))])

    def emit(self, fault: Fault | None) -> None:
        if self.g.batch:
            self.product_share()
            self.b.ret_void()  # a batched GEMM has no epilogue (fusion keeps C's blocks whole)
            return
        blocks = _k_blocks(self.n, self.target)
        if blocks > 1:  # whole blocks of K; the epilogue runs on the summed C, after the split
            assert self.partials is not None
            lo, hi = share(self.b, ir.Constant(I64, blocks), self.tid, self.nt)
            _k_block_range(self.b, self.n, self.target, self.args, self.partials, lo, hi,
                           lambda args: self.b.call(self.rng, args + [ir.Constant(I32, 0), ir.Constant(I64, 0),
                                                                      args[1], self.scratch]))
            self.b.ret_void()
            return
        M, N = self.args[0], self.args[1]
        wide = N.constant >= self.blk.nr * self.threads and N.constant >= M.constant
        block = self.column_share() if wide else self.row_share()
        _then_epilogue(self.b, self.fn, self.k, self.arg_of, block, fault)  # on this thread's block of C

    def product_share(self) -> None:
        """Whole products of a batched contraction."""
        b = self.b
        lo, hi = share(b, ir.Constant(I64, self.g.count), self.tid, self.nt)
        _each_product(b, self.g, self.args, lo, hi,
                      lambda args: b.call(self.rng, args + [ir.Constant(I32, 0), ir.Constant(I64, 0), args[1],
                                                             self.scratch]))

    def column_share(self) -> Block:
        """Whole NR strips of columns; returns the block of C it wrote."""
        b = self.b
        M, N, K, A, lda, B, ldb, C, ldc = self.args
        n0, n1 = share(b, N, self.tid, self.nt, self.blk.nr)
        with b.if_then(b.icmp_signed("<", n0, n1)):
            b.call(self.rng, [M, N, K, A, lda, B, ldb, C, ldc, ir.Constant(I32, 0), n0, n1, self.scratch])
        return None, (n0, n1)

    def row_share(self) -> Block:
        """Rows of C; returns the block of C it wrote."""
        b = self.b
        M, N, K, A, lda, B, ldb, C, ldc = self.args
        m0, m1 = share(b, M, self.tid, self.nt)
        a0 = b.gep(A, [m0 if self.g.ta else b.mul(m0, lda)])
        with b.if_then(b.icmp_signed("<", m0, m1)):
            b.call(self.rng, [b.sub(m1, m0), N, K, a0, lda, B, ldb, b.gep(C, [b.mul(m0, ldc)]), ldc,
                              ir.Constant(I32, 0), ir.Constant(I64, 0), N, self.scratch])
        return (m0, m1), None


def _epilogue(k: Kernel) -> Kernel | None:
    """The elementwise nodes of a contract kernel after its GEMM, as a loop kernel that reads C."""
    if k.kind is not KernelKind.CONTRACT or len(k.nodes) == 1:
        return None
    c = k.nodes[0].out
    return Kernel(KernelKind.ELEMENTWISE, k.space, k.nodes[1:], k.inputs + [c], [v for v in k.outputs if v is not c])


def _then_epilogue(b: ir.IRBuilder, fn: ir.Function, k: Kernel, arg_of: dict, block: Block,
                   fault: Fault | None) -> None:
    """Ends the GEMM code in `b`: the kernel's epilogue over the `block` of C while it is in cache,
    then return."""
    epi = _epilogue(k)
    if epi is None:
        b.ret_void()
        return
    first = len(fn.blocks)
    rows, columns = block
    ranges = tuple(columns if g[-1] == len(k.space) - 1 else rows for g in loops(epi, epilogue=True).groups)
    emit_loop_kernel(fn, epi, arg_of, ranges, fault, epilogue=True)
    b.branch(fn.blocks[first])


def _finish(m: ir.Module, fn: ir.Function, k: Kernel, arg_of: dict, target: Target, fault: Fault | None,
            shared: bool, partials: Partials) -> ir.Function | None:
    """What runs once every block of kernel fn is done, taking fn's arguments (but (tid, nt) where
    fn is a thread's share): the partial results of a kernel summed in blocks added into its output
    in block order, then the epilogue of a GEMM that splits K, on the summed C. None if nothing.
    A function of its own (a task), not code in the step: twins share it, and the step stays a
    list of calls (LLVM's time grows faster than linearly with a function's size)."""
    blocks = _k_blocks(k.nodes[0], target) if k.kind is KernelKind.CONTRACT else 1
    epilogue = _epilogue(k) if blocks > 1 else None
    if partials is None and epilogue is None:
        return None
    args = fn.function_type.args[:-2] if shared else fn.function_type.args
    fin = ir.Function(m, ir.FunctionType(ir.VoidType(), args), f"{fn.name}_finish")
    fin.linkage = "internal"
    for a, e in zip(fn.args, fin.args):
        for attr in a.attributes:
            e.add_attribute(attr)
    same = dict(zip(fn.args, fin.args))
    b = ir.IRBuilder(fin.append_basic_block("fold"))
    if partials is not None:
        scratch, at = partials
        out = k.nodes[0 if blocks > 1 else -1].out
        parts = b.bitcast(b.gep(same[scratch], [ir.Constant(I64, at)]), LLTYPES[out.dtype].as_pointer())
        if blocks > 1:
            fold(b, same[arg_of[out]], parts, blocks, math.prod(out.dims), ReduceKind.SUM, out.dtype)
        else:
            add_chunks(b, k, same[arg_of[out]], parts)
    if epilogue is None:
        b.ret_void()
        return fin
    first = len(fin.blocks)
    emit_loop_kernel(fin, epilogue, {v: same[a] for v, a in arg_of.items()},
                     fault=fault and dataclasses.replace(fault, ptr=same[fault.ptr]), epilogue=True)
    b.branch(fin.blocks[first])
    return fin


def _blocking(n: Node, target: Target):
    """The blocking of a contraction node's GEMM: its tile is chosen for the shape of C."""
    c = _gemm(n)
    return gemm_blocking(target, n.out.dtype, c.ta, c.tb, (c.m, c.n), c.k)


K_BLOCKS = 4  # at most, of K for a GEMM that splits it (see _k_blocks; the measurement: docs/perf.md)


def _k_blocks(n: Node, target: Target) -> int:
    """The blocks of K a GEMM sums apart (1: none), each into a partial C (the first into C), added
    in block order: threads take whole blocks, and the bits do not depend on how many there are.
    K is split, into blocks of whole KC blocks, where shares of C would each pack all of a long
    operand: C too narrow for column shares and too short for row shares of two threads, or small
    beside K (a weight gradient over the batch's rows: each thread would pack all of one operand
    for half of C's columns), or it is the dot-product kernel's (each would read all of A or B, in
    uneven shares of a small C)."""
    c, blk = _gemm(n), _blocking(n, target)
    narrow = c.n < 2 * blk.nr and c.m < 4 * blk.mr
    small = c.k >= 4 * max(c.m, c.n)
    if c.batch or c.m * c.n > target.tuning.partial_max or not (blk.dot or narrow or small) or c.k < 2 * blk.kc:
        return 1
    return min(K_BLOCKS, c.k // blk.kc)


def _k_block_range(b: ir.IRBuilder, n: Node, target: Target, args: list[ir.Value], partials: Partials,
                   lo: ir.Value, hi: ir.Value, call: Callable[[list[ir.Value]], object]) -> None:
    """call(GEMM args) for K blocks [lo, hi) of contraction node `n` (`_k_blocks`): A and B from the
    block's first k, into C (block 0) or the block's partial C; blocks start at whole vectors (the
    dot kernel) or whole KC blocks."""
    c, blk = _gemm(n), _blocking(n, target)
    blocks, unit = _k_blocks(n, target), blk.lanes if blk.dot else blk.kc
    units = -(-c.k // unit)
    M, N, K, A, lda, B, ldb, C, ldc = args
    assert partials is not None
    scratch, at = partials
    parts = b.bitcast(b.gep(scratch, [ir.Constant(I64, at)]), C.type)
    const = lambda x: ir.Constant(I64, x)

    def block(i: ir.Value) -> None:
        start = lambda j: b.mul(b.udiv(b.mul(j, const(units)), const(blocks)), const(unit))
        k0, end = start(i), start(b.add(i, const(1)))
        k1 = b.select(b.icmp_signed("<", end, K), end, K)
        dest = b.select(b.icmp_signed("==", i, const(0)), C,
                        b.gep(parts, [b.mul(b.sub(i, const(1)), const(c.m * c.n))]))
        a0 = b.gep(A, [b.mul(k0, lda) if c.ta else k0])
        b0 = b.gep(B, [k0 if c.tb else b.mul(k0, ldb)])
        call([M, N, b.sub(k1, k0), a0, lda, b0, ldb, dest, ldc])
    for_range(b, hi, block, lo, vectorize=False)


def _task(fn: ir.Function, share: bool = False) -> ir.Function:
    """The task that runs kernel function `fn`: task(arg, tid, nt) unpacks fn's pointers from `arg`
    and calls fn (with tid and nt, for a thread's `share`). Every kernel is run through one, by the
    pool or by the step (`_call`), and never inlined into the step: LLVM optimizes each kernel on
    its own, once however many kernels share fn, instead of one step function of thousands of
    kernels, whose cost grew faster than the model. fn's pointers are loaded from `arg`, never
    passed as arguments: LLVM's loop vectorizer picks a reduction's interleaving, and so the order
    of its sum, from the registers it counts for the loop's invariants, which count a loaded
    pointer but not an argument (docs/perf.md, Compile time)."""
    if f"{fn.name}_task" in fn.module.globals:
        return fn.module.globals[f"{fn.name}_task"]
    struct = ir.LiteralStructType(fn.function_type.args[:-2] if share else fn.function_type.args)
    task = ir.Function(fn.module, TASK.pointee, f"{fn.name}_task")
    task.linkage = "internal"
    task.attributes.add("noinline")
    raw, tid, nt = task.args
    b = ir.IRBuilder(task.append_basic_block("entry"))
    p = b.bitcast(raw, struct.as_pointer())
    ptrs = [b.load(b.gep(p, [ir.Constant(I32, 0), ir.Constant(I32, i)])) for i in range(len(struct.elements))]
    b.call(fn, ptrs + ([tid, nt] if share else []))
    b.ret_void()
    return task


def _pack(b: ir.IRBuilder, arg: ir.Value, ptrs: list[ir.Value]) -> None:
    """Leave `ptrs` in a task's argument `arg`, as the struct the task reads (pointers are laid out
    as in an array)."""
    for i, v in enumerate(ptrs):
        b.store(b.bitcast(v, I8P), b.gep(arg, [ir.Constant(I64, i)]))


def _post(b: ir.IRBuilder, run: ir.Value, pool: ir.Value, task: ir.Function, arg: ir.Value,
          ptrs: list[ir.Value], threads: int) -> None:
    """Run `task` on the pool's `threads` threads, with `ptrs` in its argument `arg`."""
    _pack(b, arg, ptrs)
    b.call(run, [pool, task, b.bitcast(arg, I8P), ir.Constant(I64, threads)])


def _call(b: ir.IRBuilder, task: ir.Function, arg: ir.Value, ptrs: list[ir.Value]) -> None:
    """Run `task` on this thread, over all of its kernel's work, with `ptrs` in its argument `arg`."""
    _pack(b, arg, ptrs)
    b.call(task, [b.bitcast(arg, I8P), ir.Constant(I64, 0), ir.Constant(I64, 1)])
