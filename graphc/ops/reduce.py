"""Reductions over axes: sum, max, and mean (sum scaled by 1/count)."""

from __future__ import annotations

import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Decompose, Reduce, ReduceKind
from graphc.ops.registry import OpDef, float_type, norm_axes, register


def _reduce_shape(ts, attrs):
    t = ts[0]
    float_type(t)
    axes = norm_axes(attrs["axes"], t.rank)
    if attrs["keepdims"]:
        return TensorType(t.dtype, tuple(1 if i in axes else d for i, d in enumerate(t.shape)))
    return TensorType(t.dtype, tuple(d for i, d in enumerate(t.shape) if i not in axes))


def _expand(b, g, n):
    """Broadcast a reduction's gradient (or result) back over the reduced axes of its input."""
    x, axes = n.inputs[0], _axes(n)
    kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if tuple(g.shape) != kept:
        g = b.reshape(g, shape=kept)
    return b.broadcast_to(g, shape=tuple(x.shape))


def _axes(n) -> tuple[int, ...]:
    return norm_axes(n.attrs["axes"], n.inputs[0].type.rank)


def _count(n) -> int:
    return math.prod(n.inputs[0].shape[a] for a in _axes(n))


_DEFAULTS = {"axes": None, "keepdims": False}
_DOC = "x: T[s], axes=None (all), keepdims=false -> T[s without (or 1 at) axes]"


def _np_axes(x, axes):
    return None if axes is None else tuple(norm_axes(axes, x.ndim))


register(OpDef(
    "sum", 1, _reduce_shape,
    lambda b, n, g: [_expand(b, g, n)],
    lambda x, axes, keepdims: np.sum(x, axis=_np_axes(x, axes), keepdims=keepdims),
    Reduce(ReduceKind.SUM, _axes), _DEFAULTS, _DOC))

def _max_vjp(b, n, g):
    """Elements equal to the max share its gradient evenly (as in PyTorch and JAX): where ties are
    copies of one value (a max over overlapping pooling windows), the copies' shares add up to it."""
    x, axes = n.inputs[0], n.attrs["axes"]
    hit = b.eq(x, _expand(b, n.out, n))
    share = b.div(_expand(b, g, n), _expand(b, b.sum(hit, axes=axes, keepdims=n.attrs["keepdims"]), n))
    return [b.mul(share, hit)]


register(OpDef(
    "max", 1, _reduce_shape,
    _max_vjp,
    lambda x, axes, keepdims: np.max(x, axis=_np_axes(x, axes), keepdims=keepdims),
    Reduce(ReduceKind.MAX, _axes), _DEFAULTS, _DOC + ", the gradient shared evenly among ties"))

register(OpDef(
    "mean", 1, _reduce_shape,
    lambda b, n, g: [b.mul(_expand(b, g, n), 1.0 / _count(n))],
    lambda x, axes, keepdims: np.mean(x, axis=_np_axes(x, axes), keepdims=keepdims),
    Decompose(lambda b, x, axes, keepdims: b.mul(
        b.sum(x, axes=axes, keepdims=keepdims),
        1.0 / math.prod(x.shape[a] for a in norm_axes(axes, x.type.rank)))),
    _DEFAULTS, _DOC))
