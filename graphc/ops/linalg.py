"""Matrix multiplication over leading batch dims (NumPy's broadcasting), either operand's last two
axes transposed: a contraction run by the generated GEMM."""

from __future__ import annotations

import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Contraction, Described
from graphc.ops.registry import OpDef, broadcast_shapes, float_type, register, require, sum_to


def _matmul_shape(ts, attrs):
    a, b = ts
    float_type(a, "left operand")
    float_type(b, "right operand")
    require(a.rank >= 2 and b.rank >= 2, f"matmul takes operands of rank 2 or more, got {a} and {b}")
    require(a.dtype == b.dtype, f"dtypes differ: {a} and {b}")
    m, k = reversed(a.shape[-2:]) if attrs["ta"] else a.shape[-2:]
    k2, n = reversed(b.shape[-2:]) if attrs["tb"] else b.shape[-2:]
    require(k == k2, f"inner dimensions differ: {a} @ {b} ({k} vs {k2})")
    return TensorType(a.dtype, broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n))


def _matmul_vjp(b, n, g):
    x, w = n.inputs
    ta, tb = n.attrs["ta"], n.attrs["tb"]
    if w.type.rank == 2 < x.type.rank and not ta:
        # w is shared by every row of x: dW sums over them, one GEMM over the rows as its K
        rows = math.prod(x.dims[:-1])
        x2, g2 = b.reshape(x, shape=(rows, x.dims[-1])), b.reshape(g, shape=(rows, g.dims[-1]))
        dw = b.matmul(g2, x2, ta=True) if tb else b.matmul(x2, g2, ta=True)
    else:
        dw = b.matmul(g, x, ta=True, tb=ta) if tb else b.matmul(x, g, ta=not ta, tb=False)
    # C = op(A) op(B): d op(A) = G op(B)^T, d op(B) = op(A)^T G; transposes stay flags, never copies
    da = b.matmul(w, g, ta=tb, tb=True) if ta else b.matmul(g, w, ta=False, tb=not tb)
    return [sum_to(b, da, x.shape), sum_to(b, dw, w.shape)]


def _contraction(n) -> Contraction:
    a, w = n.inputs
    ta, tb = n.attrs["ta"], n.attrs["tb"]
    m, nn = n.out.dims[-2:]
    k = a.dims[-2] if ta else a.dims[-1]
    batch = n.out.dims[:-2]
    if not batch:
        return Contraction(m, nn, k, ta, tb)
    if w.type.rank == 2 and not ta:  # every batch's rows of A are one matrix: one GEMM over them
        return Contraction(math.prod(batch) * m, nn, k, ta, tb)

    def strides(v) -> list[int]:
        """v's stride along each batch axis of C (aligned from the right), 0 where v is broadcast."""
        vb = v.dims[:-2]
        lead = (1,) * (len(batch) - len(vb)) + vb
        out, step = [], math.prod(v.dims[-2:])
        for d in reversed(lead):
            out.append(0 if d == 1 else step)
            step *= d
        return out[::-1]

    axes = zip(batch, strides(a), strides(w), strides(n.out))
    return Contraction(m, nn, k, ta, tb, tuple(axes))


def _matmul_ref(a, b, ta, tb):
    return np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)


register(OpDef(
    "matmul", 2, _matmul_shape, _matmul_vjp, _matmul_ref,
    Described(_contraction), {"ta": False, "tb": False},
    "a: T[..., m, k], b: T[..., k, n] -> T[..., m, n] over broadcast leading dims; ta/tb=true read "
    "a's last two axes as [k, m] / b's as [n, k] (infix a @ b)"))
