"""LLVM IR of the batch gather: the dataset rows an index array picks, copied into a step's input.

`graphc_gather_task(arg, tid, nt)` is a pool task (see pool.py): `arg` points to a GATHER struct
(dst, src, idx, rows, row_bytes) and thread tid copies its share of the rows, dst[r] =
src[idx[r]]. A batch of random MNIST rows is latency-bound, not bandwidth-bound: each row starts a
fresh DRAM page, and np.take measured 105 us for 128 rows, four times a contiguous copy of the same
bytes. Two threads, each prefetching a few rows ahead of the one it copies, measured 44-50 us.
"""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen.pool import TASK, share
from graphc.codegen.target import Target

I8P = ir.IntType(8).as_pointer()
I32, I64 = ir.IntType(32), ir.IntType(64)
GATHER = ir.LiteralStructType([I8P, I8P, I64.as_pointer(), I64, I64])
AHEAD = 4      # rows prefetched ahead of the row being copied (2-8 measured alike)
LINE = 64      # bytes per prefetch


def build_feed(target: Target) -> ir.Module:
    m = ir.Module("graphc_feed")
    m.triple = target.triple
    prefetch = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P, I32, I32, I32]), "llvm.prefetch.p0")
    memcpy = m.declare_intrinsic("llvm.memcpy", [I8P, I8P, I64])
    f = ir.Function(m, TASK.pointee, "graphc_gather_task")
    arg, tid, nt = f.args
    b = ir.IRBuilder(f.append_basic_block("entry"))
    p = b.bitcast(arg, GATHER.as_pointer())
    dst, src, idx, rows, row_bytes = (b.load(b.gep(p, [ir.Constant(I32, 0), ir.Constant(I32, i)]))
                                      for i in range(len(GATHER.elements)))
    lo, hi = share(b, rows, tid, nt)
    row = lambda r: b.gep(src, [b.mul(b.load(b.gep(idx, [r])), row_bytes)])

    head, body, fetch, copy, done = (f.append_basic_block(n) for n in ("head", "body", "fetch", "copy", "done"))
    entry = b.block
    b.branch(head)
    b.position_at_end(head)
    r = b.phi(I64)
    r.add_incoming(lo, entry)
    b.cbranch(b.icmp_signed("<", r, hi), body, done)
    b.position_at_end(body)
    ahead = b.add(r, ir.Constant(I64, AHEAD))
    b.cbranch(b.icmp_signed("<", ahead, hi), fetch, copy)
    b.position_at_end(fetch)  # touch every line of row r + AHEAD (read, keep in all caches)
    start = row(ahead)
    line = f.append_basic_block("line")
    b.branch(line)
    b.position_at_end(line)
    off = b.phi(I64)
    off.add_incoming(ir.Constant(I64, 0), fetch)
    b.call(prefetch, [b.gep(start, [off]), ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
    nxt = b.add(off, ir.Constant(I64, LINE))
    off.add_incoming(nxt, line)
    b.cbranch(b.icmp_signed("<", nxt, row_bytes), line, copy)
    b.position_at_end(copy)
    b.call(memcpy, [b.gep(dst, [b.mul(r, row_bytes)]), row(r), row_bytes, ir.Constant(ir.IntType(1), 0)])
    r.add_incoming(b.add(r, ir.Constant(I64, 1)), copy)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()
    return m
