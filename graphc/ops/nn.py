"""Network ops built from primitives: softmax, log_softmax, softmax_cross_entropy, mse, mae, accuracy.

Each has its own vjp (the compact closed forms from the blog posts, e.g. SoftmaxWithLoss backward is
(softmax - onehot) / B) and lowers by decomposing into reductions and elementwise ops.
"""

from __future__ import annotations

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Decompose
from graphc.ops.registry import OpDef, Trait, float_type, norm_axes, register, require


def _same(ts, attrs):
    float_type(ts[0])
    norm_axes(attrs["axis"], ts[0].rank, "axis")
    return ts[0]


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _softmax(b, x, axis):
    e = b.exp(b.sub(x, b.max(x, axes=axis, keepdims=True)))
    return b.mul(e, b.div(1.0, b.sum(e, axes=axis, keepdims=True)))  # a division per row, not per element


def _log_softmax(b, x, axis):
    z = b.sub(x, b.max(x, axes=axis, keepdims=True))
    return b.sub(z, b.log(b.sum(b.exp(z), axes=axis, keepdims=True)))


register(OpDef(
    "softmax", 1, _same,
    lambda b, n, g: [b.mul(n.out, b.sub(g, b.sum(b.mul(g, n.out), axes=n.attrs["axis"], keepdims=True)))],
    _np_softmax, Decompose(_softmax), {"axis": -1}, "x: T[s] -> T[s], normalized along axis (-1)"))

register(OpDef(
    "log_softmax", 1, _same,
    lambda b, n, g: [b.sub(g, b.mul(b.exp(n.out), b.sum(g, axes=n.attrs["axis"], keepdims=True)))],
    _np_log_softmax, Decompose(_log_softmax), {"axis": -1}, "x: T[s] -> T[s] (axis=-1)"))


def _labels_shape(ts, attrs):
    x, y = ts
    float_type(x, "logits")
    require(x.rank >= 2, f"logits must be [..., classes] with at least one leading axis, got {x}")
    want = ",".join(map(str, x.shape[:-1]))
    require(y.dtype == "i32" and y.shape == x.shape[:-1], f"labels must be i32[{want}], got {y}")
    return TensorType(x.dtype, ())


def _classes(ts, attrs):
    """Labels index the logits' last axis."""
    return {1: ts[0].shape[-1]}


def _onehot_like(b, x, y):
    return b.onehot(y, n=x.shape[-1], dtype=x.dtype)


def _rows(x) -> int:
    """How many label positions the logits hold (every axis but the classes)."""
    return int(np.prod(x.dims[:-1]))


def _np_picked(x, y):
    """log softmax(x) at each label."""
    return np.take_along_axis(_np_log_softmax(x, -1), y[..., None], axis=-1)


register(OpDef(
    "softmax_cross_entropy", 2, _labels_shape,
    lambda b, n, g: [b.mul(b.sub(b.softmax(n.inputs[0], axis=-1), _onehot_like(b, *n.inputs)),
                           b.mul(g, 1.0 / _rows(n.inputs[0]))), None],
    lambda x, y: -np.mean(_np_picked(x, y)),
    Decompose(lambda b, x, y: b.mul(b.sum(b.mul(_onehot_like(b, x, y), b.log_softmax(x, axis=-1))),
                                    -1.0 / _rows(x))),
    {}, "logits: T[..., c], labels: i32[...] -> T[], mean over the label positions of -log softmax(logits)[label]",
    traits=frozenset({Trait.LOSS}), operands=("logits", "labels"), indices=_classes))

def _accuracy(b, x, y):
    """1 where the label is the first max (argmax): `score` is c - index at each max and 0
    elsewhere, so its max sits at the first max alone, and a tie with an earlier class counts
    as wrong."""
    score = b.mul(b.eq(x, b.max(x, axes=-1, keepdims=True)), b.sub(float(x.shape[-1]), b.iota(x, axis=-1)))
    return b.mean(b.eq(b.sum(b.mul(_onehot_like(b, x, y), score), axes=-1), b.max(score, axes=-1)))


register(OpDef(
    "accuracy", 2, _labels_shape, None,
    lambda x, y: np.mean(np.argmax(x, axis=-1) == y).astype(x.dtype),
    Decompose(_accuracy),
    {}, "logits: T[..., c], labels: i32[...] -> T[], fraction where the label is the argmax (the first "
        "max: a tie with an earlier class is wrong; no gradient)", operands=("logits", "labels"),
    indices=_classes))


def _mse_shape(ts, attrs):
    p, t = ts
    float_type(p, "prediction")
    require(p == t, f"prediction and target differ: {p} vs {t}")
    return TensorType(p.dtype, ())


def _mse_vjp(b, n, g):
    p, t = n.inputs
    d = b.mul(b.sub(p, t), b.mul(g, 2.0 / n.inputs[0].type.size()))
    return [d, b.neg(d)]


register(OpDef(
    "mse", 2, _mse_shape, _mse_vjp,
    lambda p, t: np.mean((p - t) ** 2),
    Decompose(lambda b, p, t: b.mean(b.mul(b.sub(p, t), b.sub(p, t)))),
    {}, "prediction: T[s], target: T[s] -> T[], mean squared difference",
    traits=frozenset({Trait.LOSS}), operands=("prediction", "target")))


def _mae_vjp(b, n, g):
    p, t = n.inputs
    diff = b.sub(p, t)
    d = b.mul(b.sub(b.gt(diff, 0.0), b.gt(0.0, diff)), b.mul(g, 1.0 / p.type.size()))  # sign(p - t)
    return [d, b.neg(d)]


register(OpDef(
    "mae", 2, _mse_shape, _mae_vjp,
    lambda p, t: np.mean(np.abs(p - t)),
    Decompose(lambda b, p, t: b.mean(b.maximum(b.sub(p, t), b.sub(t, p)))),
    {}, "prediction: T[s], target: T[s] -> T[], mean absolute difference",
    traits=frozenset({Trait.LOSS}), operands=("prediction", "target")))
