"""Ops that move or relabel elements: broadcast_to, transpose, reshape, flatten, slice, pad, concat,
pack, unpack, iota, onehot."""

from __future__ import annotations

import itertools
import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Affine, Decompose, Described, Elementwise, Pack, View
from graphc.ops.registry import (OpDef, broadcast_shapes, is_int, register, require, shape_attr, show,
                                  sum_to)


def _broadcast_shape(ts, attrs):
    shape = tuple(shape_attr(attrs["shape"]))
    require(broadcast_shapes(ts[0].shape, shape) == shape,
            f"cannot broadcast {ts[0]} to [{','.join(map(str, shape))}]")
    return TensorType(ts[0].dtype, shape)


register(OpDef(
    "broadcast_to", 1, _broadcast_shape,
    lambda b, n, g: [sum_to(b, g, n.inputs[0].shape)],
    lambda x, shape: np.broadcast_to(x, shape).copy(),
    Elementwise(lambda s, x, shape: x), {}, "x: T[s], shape -> T[shape]"))


def _perm(attrs, rank):
    perm = attrs.get("perm")
    if perm is None:
        return tuple(reversed(range(rank)))
    require(isinstance(perm, tuple) and all(is_int(p) and -rank <= p < rank for p in perm),
            f"perm must list the {rank} axes, got {perm}")
    return tuple(p % rank for p in perm)


def _transpose_shape(ts, attrs):
    t = ts[0]
    perm = _perm(attrs, t.rank)
    require(sorted(perm) == list(range(t.rank)), f"perm {perm} is not a permutation of {t.rank} axes")
    return TensorType(t.dtype, tuple(t.shape[p] for p in perm))


register(OpDef(
    "transpose", 1, _transpose_shape,
    lambda b, n, g: [b.transpose(g, perm=tuple(int(i) for i in np.argsort(_perm(n.attrs, g.type.rank))))],
    lambda x, perm: np.transpose(x, perm).copy(),
    Elementwise(lambda s, x, perm: x,
                lambda ts, out, attrs: [tuple(int(i) for i in np.argsort(_perm(attrs, ts[0].rank)))]),
    {"perm": None}, "x: T[s] -> T[s permuted by perm] (default: reversed axes)"))


def _reshape_shape(ts, attrs):
    t = ts[0]
    shape = shape_attr(attrs["shape"], inferred=True)
    want = TensorType(t.dtype, tuple(shape))
    require(shape.count(-1) <= 1, "at most one -1 in shape")
    sym_in = sorted(str(d) for d in t.shape if isinstance(d, str))
    sym_out = sorted(str(d) for d in shape if isinstance(d, str))
    require(sym_in == sym_out, f"reshape of {t} to {want} must keep its symbolic dims")
    known = math.prod(d for d in t.shape if isinstance(d, int))
    fixed = math.prod(d for d in shape if isinstance(d, int) and d != -1)
    if -1 in shape:
        require(known % fixed == 0, f"cannot reshape {t} to {want}")
        shape[shape.index(-1)] = known // fixed
    require(math.prod(d for d in shape if isinstance(d, int)) == known,
            f"cannot reshape {t} ({known} elements per symbolic slice) to {want}")
    return TensorType(t.dtype, tuple(shape))


register(OpDef(
    "reshape", 1, _reshape_shape,
    lambda b, n, g: [b.reshape(g, shape=n.inputs[0].shape)],
    lambda x, shape: np.reshape(x, shape),
    View(), {}, "x: T[s], shape -> T[shape] (same element count; one -1 is inferred)"))


def _flatten_shape(ts, attrs):
    t = ts[0]
    require(t.rank >= 1, f"needs at least one axis, got {t}")
    rest = t.shape[1:]
    require(all(isinstance(d, int) for d in rest), f"flatten: trailing dims of {t} must be known")
    return TensorType(t.dtype, (t.shape[0], math.prod(rest)))


register(OpDef(
    "flatten", 1, _flatten_shape,
    lambda b, n, g: [b.reshape(g, shape=n.inputs[0].shape)],
    lambda x: x.reshape(x.shape[0], -1),
    View(), {}, "x: T[n, d1, ..., dk] -> T[n, d1*...*dk]"))


def _pack_shape(ts, attrs):
    require(len(ts) > 0, "pack needs at least one operand")
    require(all(t.dtype == ts[0].dtype for t in ts), f"pack's operands must share a dtype, got "
            f"{', '.join(str(t) for t in ts)}")
    require(all(isinstance(d, int) for t in ts for d in t.shape), "pack's operands must have known dims")
    return TensorType(ts[0].dtype, (sum(t.size() for t in ts),))


def _pack_vjp(b, n, g):
    offsets = itertools.accumulate((v.type.size() for v in n.inputs), initial=0)
    return [b.unpack(g, offset=o, shape=v.shape) for o, v in zip(offsets, n.inputs)]


register(OpDef(
    "pack", 0, _pack_shape, _pack_vjp,
    lambda *xs: np.concatenate([x.ravel() for x in xs]),
    Pack(), {}, "x1: T[s1], x2: T[s2], ... -> T[n], their elements one after another (n: the sum of "
                "their sizes), in one buffer: what one call moves (an allreduce of every gradient)"))


def _unpack_shape(ts, attrs):
    t, shape, offset = ts[0], shape_attr(attrs["shape"]), attrs["offset"]
    require(t.rank == 1 and isinstance(t.shape[0], int), f"unpack reads a 1-D tensor of known size, got {t}")
    require(all(isinstance(d, int) for d in shape), f"unpack: shape {show(shape)} must be known")
    size = math.prod(shape)
    require(is_int(offset) and 0 <= offset and offset + size <= t.shape[0],
            f"unpack: elements [{show(offset)}, {show(offset)} + {size}) are not inside {t}")
    return TensorType(t.dtype, tuple(shape))


register(OpDef(
    "unpack", 1, _unpack_shape,
    lambda b, n, g: [b.pad(b.reshape(g, shape=(-1,)), axis=0, before=n.attrs["offset"],
                           after=n.inputs[0].shape[0] - n.attrs["offset"] - n.out.type.size())],
    lambda x, offset, shape: x[offset:offset + math.prod(shape)].reshape(shape),
    Described(lambda n: View(n.attrs["offset"])), {},
    "x: T[n], offset, shape -> T[shape], the elements from offset on, in place (pack's inverse)"))


def _axis(t, attrs) -> int:
    axis = attrs["axis"]
    require(is_int(axis) and -t.rank <= axis < t.rank, f"axis {show(axis)} out of range for {t}")
    return axis % t.rank


def _slice_shape(ts, attrs):
    t = ts[0]
    axis = _axis(t, attrs)
    start, stop = attrs["start"], attrs["stop"]
    size = t.shape[axis]
    require(isinstance(size, int), f"slice: axis {axis} of {t} must be known")
    require(isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= size,
            f"slice [{start}:{stop}] is not a non-empty range inside axis {axis} of {t}")
    return TensorType(t.dtype, tuple(stop - start if i == axis else d for i, d in enumerate(t.shape)))


def _shift(rank: int, axis: int, by: int) -> tuple:
    """An index map reading axis `axis` shifted by `by` (others as they are)."""
    return tuple(Affine(((i, 1),), by) if i == axis else i for i in range(rank))


register(OpDef(
    "slice", 1, _slice_shape,
    lambda b, n, g: [b.pad(g, axis=n.attrs["axis"], before=n.attrs["start"],
                           after=n.inputs[0].shape[_axis(n.inputs[0].type, n.attrs)] - n.attrs["stop"])],
    lambda x, axis, start, stop: np.take(x, range(start, stop), axis=axis),
    Elementwise(lambda s, x, **attrs: x,
                lambda ts, out, attrs: [_shift(ts[0].rank, _axis(ts[0], attrs), attrs["start"])]),
    {}, "x: T[s], axis, start, stop -> T[s with stop-start at axis]: elements start..stop-1 of axis"))


def _pad_shape(ts, attrs):
    t = ts[0]
    axis = _axis(t, attrs)
    before, after = attrs["before"], attrs["after"]
    require(isinstance(t.shape[axis], int), f"pad: axis {axis} of {t} must be known")
    require(isinstance(before, int) and isinstance(after, int) and min(before, after) >= 0,
            f"pad needs before, after >= 0, got {before}, {after}")
    return TensorType(t.dtype, tuple(d + before + after if i == axis else d for i, d in enumerate(t.shape)))


def _pad_ref(x, axis, before, after, value):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (before, after)
    return np.pad(x, widths, constant_values=value)


register(OpDef(
    "pad", 1, _pad_shape,
    lambda b, n, g: [b.slice(g, axis=n.attrs["axis"], start=n.attrs["before"],
                             stop=n.attrs["before"] + n.inputs[0].shape[_axis(n.inputs[0].type, n.attrs)])],
    _pad_ref,
    Elementwise(lambda s, x, **attrs: x,
                lambda ts, out, attrs: [_shift(ts[0].rank, _axis(ts[0], attrs), -attrs["before"])],
                fill=lambda attrs: attrs["value"]),
    {"before": 0, "after": 0, "value": 0.0},
    "x: T[s], axis, before=0, after=0, value=0 -> T[s with before+after more at axis], filled with value"))


def _concat_shape(ts, attrs):
    a, c = ts
    axis = _axis(a, attrs)
    require(a.dtype == c.dtype and a.rank == c.rank and all(
        x == y for i, (x, y) in enumerate(zip(a.shape, c.shape)) if i != axis),
        f"concat along axis {axis} needs the other dims and dtypes to agree: {a} and {c}")
    require(isinstance(a.shape[axis], int) and isinstance(c.shape[axis], int),
            f"concat: axis {axis} must be known")
    return TensorType(a.dtype, tuple(x + y if i == axis else x for i, (x, y) in enumerate(zip(a.shape, c.shape))))


def _concat_vjp(b, n, g):
    a, c = n.inputs
    axis = _axis(a.type, n.attrs)
    na, nc = a.shape[axis], c.shape[axis]
    return [b.slice(g, axis=axis, start=0, stop=na), b.slice(g, axis=axis, start=na, stop=na + nc)]


def _concat_lower(b, a, c, axis):
    ax = _axis(a.type, {"axis": axis})
    return b.add(b.pad(a, axis=ax, after=c.shape[ax]), b.pad(c, axis=ax, before=a.shape[ax]))


register(OpDef(
    "concat", 2, _concat_shape, _concat_vjp,
    lambda a, c, axis: np.concatenate([a, c], axis=axis),
    Decompose(_concat_lower), {"axis": 0},
    "a: T[s], b: T[t], axis=0 -> a then b along axis (the other dims agree)"))


def _iota_shape(ts, attrs):
    _axis(ts[0], attrs)
    require(ts[0].is_float, f"iota takes a float tensor (for its shape), got {ts[0]}")
    return ts[0]


def _iota_ref(x, axis):
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return np.broadcast_to(np.arange(x.shape[axis], dtype=x.dtype).reshape(shape), x.shape).copy()


register(OpDef(
    "iota", 1, _iota_shape, None, _iota_ref,
    Elementwise(lambda s, x, axis: s.index(axis)), {},
    "x: T[s], axis -> T[s], each element's index along axis (x gives only the shape; no gradient)"))


def _onehot_shape(ts, attrs):
    require(ts[0].dtype == "i32", f"labels must be i32, got {ts[0]}")
    require(isinstance(attrs.get("n"), int) and attrs["n"] > 0, "onehot needs n=<number of classes>")
    return TensorType(attrs["dtype"], tuple(ts[0].shape) + (attrs["n"],))


register(OpDef(
    "onehot", 1, _onehot_shape, None,
    lambda y, n, dtype: (y[..., None] == np.arange(n)).astype({"f32": np.float32, "f64": np.float64}[dtype]),
    Elementwise(lambda s, y, n, dtype: s.eq(s.to_float(y), s.index(-1)),
                lambda ts, out, attrs: [tuple(range(ts[0].rank))]),
    {"dtype": "f32"}, "y: i32[s], n -> T[s, n], 1 at each label (no gradient)",
    indices=lambda ts, attrs: {0: attrs["n"]}, dtype_attr="dtype"))
