"""LLVM IR of the batch feed: the dataset rows an index array picks, copied into a step's inputs.

`graphc_feed_task(arg, tid, nt)` is a pool task (see pool.py): `arg` points to a FEED struct (idx,
rows, sources, count, fault) and thread tid handles its share of the batch's rows for every SOURCE
(dst, src, src_rows, row_bytes, divisor, conversion): dst[r] = src[idx[r]]. A conversion (CONVERSIONS) says how a row
moves: "copy" keeps the input's dtype; "u8_f32" and "u8_f64" read bytes (images as stored, a
quarter of float32's size) and write float32(byte) / divisor, widened for f64, which is how
data.py makes float features from the same bytes. An index outside a source's rows is not read:
it sets *fault and leaves that row as it was.

A batch of random rows is latency-bound, not bandwidth-bound (each row starts a fresh DRAM page),
so each thread prefetches a few rows ahead of the one it copies (docs/perf.md has the figures).
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from graphc.codegen.kernels import for_range
from graphc.codegen.pool import TASK, share
from graphc.codegen.target import Target

I8P = ir.IntType(8).as_pointer()
I32, I64, F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
SOURCE = ir.LiteralStructType([I8P, I8P, I64, I64, F32, I32])
FEED = ir.LiteralStructType([I64.as_pointer(), I64, SOURCE.as_pointer(), I64, I64.as_pointer()])
CONVERSIONS = {"copy": 1, "u8_f32": 4, "u8_f64": 8}  # how a row moves: dst bytes per src byte
LINE = 64      # bytes per prefetch

# copies one row: (builder, dst row, src row, the src row's bytes, divisor)
RowCopy = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, ir.Value], None]


def build_feed(target: Target) -> ir.Module:
    m = ir.Module("graphc_feed")
    m.triple = target.triple
    memcpy = m.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    copies: dict[str, RowCopy] = {
        "copy": lambda b, dst, src, n, _: b.call(memcpy, [dst, src, n, ir.Constant(ir.IntType(1), 0)]),
        "u8_f32": _converter(F32), "u8_f64": _converter(ir.DoubleType())}
    prefetch = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P, I32, I32, I32]), "llvm.prefetch.p0")
    f = ir.Function(m, TASK.pointee, "graphc_feed_task")
    arg, tid, nt = f.args
    b = ir.IRBuilder(f.append_basic_block("entry"))
    idx, rows, sources, count, fault = _fields(b, b.bitcast(arg, FEED.as_pointer()), FEED)
    lo, hi = share(b, rows, tid, nt)

    def source(s: ir.Value) -> None:
        dst, src, src_rows, row_bytes, divisor, conversion = _fields(b, b.gep(sources, [s]), SOURCE)
        lines = b.udiv(b.add(row_bytes, ir.Constant(I64, LINE - 1)), ir.Constant(I64, LINE))
        row_at = lambda i: b.gep(src, [b.mul(i, row_bytes)])

        def one_row(r: ir.Value, widen: int, copy_row: RowCopy) -> None:
            ahead = b.add(r, ir.Constant(I64, target.tuning.prefetch_rows))
            with b.if_then(b.icmp_signed("<", ahead, hi)):  # touch every line of a row ahead
                i = b.load(b.gep(idx, [ahead]))
                with b.if_then(b.icmp_unsigned("<", i, src_rows)):
                    start = row_at(i)
                    for_range(b, lines, lambda j: b.call(prefetch, [
                        b.gep(start, [b.mul(j, ir.Constant(I64, LINE))]),
                        ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)]))
            i = b.load(b.gep(idx, [r]))
            # unsigned: a negative index is a huge one
            with b.if_else(b.icmp_unsigned("<", i, src_rows)) as (good, bad):
                with good:
                    copy_row(b, b.gep(dst, [b.mul(r, b.mul(row_bytes, ir.Constant(I64, widen)))]),
                             row_at(i), row_bytes, divisor)
                with bad:
                    b.store(ir.Constant(I64, 1), fault)

        done = b.append_basic_block("source.done")
        switch = b.switch(conversion, done)
        for k, (name, widen) in enumerate(CONVERSIONS.items()):
            case = b.append_basic_block(f"source.{name}")
            switch.add_case(ir.Constant(I32, k), case)
            b.position_at_end(case)
            for_range(b, hi, lambda r: one_row(r, widen, copies[name]), start=lo)
            b.branch(done)
        b.position_at_end(done)
    for_range(b, count, source)
    b.ret_void()
    return m


def _fields(b: ir.IRBuilder, p: ir.Value, struct: ir.LiteralStructType) -> list[ir.Value]:
    return [b.load(b.gep(p, [ir.Constant(I32, 0), ir.Constant(I32, i)])) for i in range(len(struct.elements))]


def _converter(ty: ir.Type) -> RowCopy:
    def convert(b: ir.IRBuilder, dst: ir.Value, src: ir.Value, n: ir.Value, divisor: ir.Value) -> None:
        out = b.bitcast(dst, ty.as_pointer())

        def element(j: ir.Value) -> None:
            x = b.fdiv(b.uitofp(b.load(b.gep(src, [j])), F32), divisor)
            b.store(x if ty == F32 else b.fpext(x, ty), b.gep(out, [j]))
        for_range(b, n, element)
    return convert
