"""Assembles a Schedule into one LLVM module: a function per kernel and one step entry point.

The entry `void NAME(i8** table)` runs every kernel in order; table[i] is the base pointer of the
plan's buffer i (inputs, params, state, outputs, arena), so no Python runs between kernels.
"""

from __future__ import annotations

import math

from llvmlite import ir

from graphc.codegen.gemm import define_gemm
from graphc.codegen.kernels import emit_loop_kernel, for_range
from graphc.codegen.scalar import LLTYPES
from graphc.codegen.target import Target
from graphc.ir.graph import Value
from graphc.passes.fuse import Kernel
from graphc.passes.pipeline import Schedule

I8P = ir.IntType(8).as_pointer()
I64, I32 = ir.IntType(64), ir.IntType(32)


def build_module(s: Schedule, target: Target, entry: str = "graphc_step") -> ir.Module:
    m = ir.Module(name=s.graph.name)
    m.triple = target.triple
    step = ir.Function(m, ir.FunctionType(ir.VoidType(), [I8P.as_pointer()]), entry)
    b = ir.IRBuilder(step.append_basic_block("entry"))
    table = step.args[0]
    bases = [b.load(b.gep(table, [ir.Constant(I64, i)])) for i in range(len(s.plan.buffers))]

    def pointer(v: Value) -> ir.Value:
        buf, off = s.plan.place[v]
        p = b.gep(bases[buf], [ir.Constant(I64, off)]) if off else bases[buf]
        return b.bitcast(p, LLTYPES[v.dtype].as_pointer())

    for i, k in enumerate(s.kernels):
        if k.kind == "view" and s.plan.place[k.outputs[0]] == s.plan.place[k.inputs[0]]:
            continue  # the view shares its source's buffer: nothing to run
        args = _distinct(k, s.plan.place)
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [LLTYPES[v.dtype].as_pointer() for v in args]),
                         f"k{i}_{k.name}")
        fn.linkage = "internal"
        shared = {p for p in (s.plan.place[v] for v in k.inputs + k.outputs)
                  if sum(s.plan.place[v] == p for v in set(k.inputs + k.outputs)) > 1}
        for a, v in zip(fn.args, args):
            if s.plan.place[v] not in shared:
                a.add_attribute("noalias")
        arg_of = {v: fn.args[args.index(_first(args, v, s.plan.place))] for v in k.inputs + k.outputs}
        _emit_kernel(m, fn, k, arg_of, target)
        b.call(fn, [pointer(v) for v in args])
    b.ret_void()
    return m


def _first(args: list[Value], v: Value, place: dict) -> Value:
    return next(a for a in args if place[a] == place[v])


def _distinct(k: Kernel, place: dict) -> list[Value]:
    """One pointer argument per distinct buffer location the kernel touches."""
    out: list[Value] = []
    for v in k.inputs + k.outputs:
        if all(place[a] != place[v] for a in out):
            out.append(v)
    return out


def _emit_kernel(m: ir.Module, fn: ir.Function, k: Kernel, arg_of: dict, target: Target) -> None:
    if k.kind in ("elementwise", "reduce"):
        emit_loop_kernel(fn, k, arg_of)
        return
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    n = k.nodes[0]
    if k.kind == "contract":
        a, w = n.inputs
        ta, tb = n.attrs["ta"], n.attrs["tb"]
        mm, nn = n.out.shape
        kk = a.shape[0] if ta else a.shape[1]
        gemm = define_gemm(m, target, n.out.dtype, ta, tb)
        c = lambda x: ir.Constant(I64, x)
        b.call(gemm, [c(mm), c(nn), c(kk), arg_of[a], c(a.shape[1]), arg_of[w], c(w.shape[1]),
                      arg_of[n.out], c(nn), ir.Constant(I32, 0)])
    else:  # a view whose result lives elsewhere (a graph output): copy it
        src, dst = arg_of[n.inputs[0]], arg_of[n.out]
        for_range(b, math.prod(n.out.shape), lambda i: b.store(b.load(b.gep(src, [i])), b.gep(dst, [i])))
    b.ret_void()
