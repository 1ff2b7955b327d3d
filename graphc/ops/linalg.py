"""Matrix multiplication with either operand transposed (a contraction run by the generated GEMM)."""

from __future__ import annotations

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Contract, Contraction
from graphc.ops.registry import OpDef, float_type, register, require


def _matmul_shape(ts, attrs):
    a, b = ts
    float_type(a, "left operand")
    float_type(b, "right operand")
    require(a.rank == 2 and b.rank == 2, f"matmul takes 2-D operands, got {a} and {b}")
    require(a.dtype == b.dtype, f"dtypes differ: {a} and {b}")
    m, k = reversed(a.shape) if attrs["ta"] else a.shape
    k2, n = reversed(b.shape) if attrs["tb"] else b.shape
    require(k == k2, f"inner dimensions differ: {a} @ {b} ({k} vs {k2})")
    return TensorType(a.dtype, (m, n))


def _matmul_vjp(b, n, g):
    x, w = n.inputs
    ta, tb = n.attrs["ta"], n.attrs["tb"]
    # C = op(A) op(B): d op(A) = G op(B)^T, d op(B) = op(A)^T G; transposes stay flags, never copies
    da = b.matmul(w, g, ta=tb, tb=True) if ta else b.matmul(g, w, ta=False, tb=not tb)
    dw = b.matmul(g, x, ta=True, tb=ta) if tb else b.matmul(x, g, ta=not ta, tb=False)
    return [da, dw]


def _contraction(n) -> Contraction:
    (m, nn), ta = n.out.shape, n.attrs["ta"]
    a = n.inputs[0].shape
    return Contraction(m, nn, a[0] if ta else a[1], ta, n.attrs["tb"])


register(OpDef(
    "matmul", 2, _matmul_shape, _matmul_vjp,
    lambda a, b, ta, tb: (a.T if ta else a) @ (b.T if tb else b),
    Contract(_contraction), {"ta": False, "tb": False},
    "a: T[m,k], b: T[k,n] -> T[m,n]; ta/tb=true read a as T[k,m] / b as T[n,k] (infix a @ b)"))
