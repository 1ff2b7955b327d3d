"""Built-in layers: batch_norm, layer_norm and dropout, written from primitive ops.

They are called like .net layers (`batch_norm(h) as bn1`, `dropout(h, p=0.5)`). batch_norm and
dropout need two things a .net layer cannot say: state that the training step updates in place
(batch norm's running statistics; the step counter that dropout's masks are drawn from, shared
with the learning-rate schedule), and a different form for training and for evaluation. The
front end lowers a model once per mode; a built-in emits that mode's form. layer_norm needs
neither (a .net layer could write it), but a transformer has one in every block, so it is built
in once. Autodiff derives each one's gradient from the primitives, like any layer's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

from graphc.autodiff.lr_schedule import step_counter
from graphc.errors import GraphcError
from graphc.ir.graph import Builder, Dim, Param, TensorType, Value


@dataclass
class Instance:
    """One call of a built-in: what it may add to the graph being lowered."""

    b: Builder      # positioned at the call, scoped to the instance name
    training: bool  # which form to emit

    def _leaf(self, into: list[Param], name: str, shape: tuple[Dim, ...], dtype: str,
              init: str) -> Value:
        v = Value(f"{self.b.scope}.{name}", TensorType(dtype, shape))
        into.append(Param(v, init, {}, self.b.loc))
        return v

    def param(self, name: str, shape: tuple[Dim, ...], dtype: str, init: str) -> Value:
        """A trained param of this instance, `scope.name`."""
        return self._leaf(self.b.graph.params, name, shape, dtype, init)

    def state(self, name: str, shape: tuple[Dim, ...], dtype: str, init: str) -> Value:
        """State of this instance, `scope.name`: not trained; saved with the params."""
        return self._leaf(self.b.graph.state, name, shape, dtype, init)

    def update(self, target: Value, new: Value) -> None:
        """Write `new` into state `target` in place, once per training step."""
        self.b.graph.updates.append((target, new))


def batch_norm(inst: Instance, x: Value, momentum: float, eps: float) -> Value:
    """Normalize each channel (axis 1: [N, C], [N, C, H, W], ...) by its mean and variance over the
    other axes, then scale by gamma and shift by beta. Training uses the batch's statistics and
    folds them into the running ones (the variance unbiased, as PyTorch does); evaluation uses the
    running ones."""
    b, t = inst.b, x.type
    if not t.is_float or t.rank < 2 or not isinstance(t.shape[1], int):
        raise GraphcError(f"batch_norm takes a float tensor [N, C, ...] with a known channel count "
                          f"C, got {t}", b.loc)
    _check(0 <= momentum <= 1, f"batch_norm: momentum must be in [0, 1], got {momentum}", b)
    _check(eps > 0, f"batch_norm: eps must be positive, got {eps}", b)
    c = t.shape[1]
    gamma = inst.param("gamma", (c,), t.dtype, "ones")
    beta = inst.param("beta", (c,), t.dtype, "zeros")
    running_mean = inst.state("running_mean", (c,), t.dtype, "zeros")
    running_var = inst.state("running_var", (c,), t.dtype, "ones")
    def column(v: Value) -> Value:
        """A [C] vector lined up with x's channel axis."""
        return v if t.rank == 2 else b.reshape(v, shape=(c,) + (1,) * (t.rank - 2))

    if not inst.training:
        scale = b.mul(gamma, b.div(1.0, b.sqrt(b.add(running_var, eps))))
        shift = b.sub(beta, b.mul(running_mean, scale))
        return b.add(b.mul(x, column(scale)), column(shift))
    axes = (0,) + tuple(range(2, t.rank))
    mean = b.mean(x, axes=axes, keepdims=True)
    centered = b.sub(x, mean)
    var = b.mean(b.mul(centered, centered), axes=axes, keepdims=True)
    # samples per channel, for n / (n - 1): counted in the graph, as the batch dim is bound later
    n = b.sum(b.broadcast_to(b.const(1.0, t.dtype), shape=tuple(t.shape[a] for a in axes)))
    unbiased = b.mul(b.reshape(var, shape=(c,)), b.div(n, b.sub(n, 1.0)))
    for stat, batch in ((running_mean, b.reshape(mean, shape=(c,))), (running_var, unbiased)):
        inst.update(stat, b.add(b.mul(stat, 1.0 - momentum), b.mul(batch, momentum)))
    normed = b.mul(centered, b.div(1.0, b.sqrt(b.add(var, eps))))
    return b.add(b.mul(normed, column(gamma)), column(beta))


def layer_norm(inst: Instance, x: Value, eps: float) -> Value:
    """Normalize each position ([N, D], [B, T, D], ...) by the mean and (biased) variance of its
    features, the last axis, then scale by gamma and shift by beta, as PyTorch's LayerNorm over
    one axis; the same form in training and evaluation."""
    b, t = inst.b, x.type
    if not t.is_float or t.rank < 1 or not isinstance(t.shape[-1], int):
        raise GraphcError(f"layer_norm takes a float tensor [..., D] with a known feature count D, "
                          f"got {t}", b.loc)
    _check(eps > 0, f"layer_norm: eps must be positive, got {eps}", b)
    d = t.shape[-1]
    gamma = inst.param("gamma", (d,), t.dtype, "ones")
    beta = inst.param("beta", (d,), t.dtype, "zeros")
    centered = b.sub(x, b.mean(x, axes=-1, keepdims=True))
    var = b.mean(b.mul(centered, centered), axes=-1, keepdims=True)
    normed = b.mul(centered, b.div(1.0, b.sqrt(b.add(var, eps))))
    return b.add(b.mul(normed, gamma), beta)


def dropout(inst: Instance, x: Value, p: float) -> Value:
    """Training: zero each element with probability p and scale the rest by 1/(1-p), with a mask
    that is a hash of (this instance, the step counter, the position). Evaluation: x itself."""
    b = inst.b
    if not x.type.is_float:
        raise GraphcError(f"dropout takes a float tensor, got {x.type}", b.loc)
    _check(0 <= p < 1, f"dropout: p must be in [0, 1), got {p}", b)
    if not inst.training:
        return x
    # masks are drawn from the steps done so far (state: a resumed run draws the same masks, and
    # the learning-rate schedule counts with it); each instance's seed is a hash of its name
    step = step_counter(b, b.graph, x.dtype)
    return b.dropout(x, step, p=p, seed=zlib.crc32(b.scope.encode()))


def _check(ok: bool, msg: str, b: Builder) -> None:
    if not ok:
        raise GraphcError(msg, b.loc)


@dataclass(frozen=True)
class Builtin:
    name: str
    args: dict[str, float]      # its number arguments, in order, with their defaults
    emit: Callable[..., Value]  # emit(instance, x, **args)


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("batch_norm", {"momentum": 0.1, "eps": 1e-5}, batch_norm),
    Builtin("layer_norm", {"eps": 1e-5}, layer_norm),
    Builtin("dropout", {"p": 0.5}, dropout),
)}
