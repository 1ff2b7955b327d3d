"""Optimizers as IR: clipping of the gradients by their global norm, then each optimizer's update of
every param (and its state) as graph nodes.

The learning rate is a runtime scalar input (`lr`, scaled by a schedule when there is one), so the
trainer can change it (--lr) without recompiling; the other hyperparameters are compile-time constants.
"""

from __future__ import annotations

import functools
from typing import Callable

from graphc.ir.graph import Builder, Graph, Param, TensorType, Value

# name -> {argument: default}; `lr` has no default: the train block or --lr must give it.
# Booleans (nesterov, centered) are 1.0 / 0.0.
OPTIMIZERS: dict[str, dict[str, float | None]] = {
    "sgd": {"lr": None, "momentum": 0.0, "nesterov": 0.0, "weight_decay": 0.0},
    "adagrad": {"lr": None, "eps": 1e-10, "weight_decay": 0.0},
    "rmsprop": {"lr": None, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": 0.0,
                "weight_decay": 0.0},
    "adam": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}

CLIP_EPS = 1e-6  # keeps the clipping ratio finite when every gradient is zero (as PyTorch)

Pairs = list[tuple[Value, Value]]  # (param, its gradient)


def clip_by_global_norm(b: Builder, pairs: Pairs, max_norm: float) -> Pairs:
    """Scale every gradient by min(1, max_norm / (norm + eps)), norm over all gradients together."""
    squares = [b.sum(b.mul(dw, dw)) for _, dw in pairs]
    total = squares[0]
    for s in squares[1:]:
        total = b.add(total, s)
    scale = b.minimum(b.div(max_norm, b.add(b.sqrt(total), CLIP_EPS)), 1.0)
    return [(w, b.mul(dw, scale)) for w, dw in pairs]


def _state(g: Graph, like: Value, suffix: str) -> Value:
    v = Value(f"{like.name}.{suffix}", like.type)
    g.state.append(Param(v, "zeros"))
    return v


def _average(b: Builder, g: Graph, like: Value, suffix: str, beta: float, x: Value) -> Value:
    """A running average of `x` kept as state `like.suffix` (from zero), updated in place to
    beta * itself + (1 - beta) * x; returns the new value."""
    s = _state(g, like, suffix)
    s_new = b.add(b.mul(s, beta), b.mul(x, 1.0 - beta))
    g.updates.append((s, s_new))
    return s_new


def _decayed(b: Builder, w: Value, dw: Value, weight_decay: float) -> Value:
    """L2 weight decay added to the gradient (coupled, as in SGD and Adam)."""
    return b.add(dw, b.mul(w, weight_decay)) if weight_decay else dw


def _sgd(b: Builder, g: Graph, pairs: Pairs, lr: Value, momentum, nesterov, weight_decay):
    for w, dw in pairs:
        dw = _decayed(b, w, dw, weight_decay)
        step = dw
        if momentum:
            v = _state(g, w, "velocity")
            v_new = b.add(b.mul(v, momentum), dw)
            g.updates.append((v, v_new))
            step = b.add(dw, b.mul(v_new, momentum)) if nesterov else v_new
        g.updates.append((w, b.sub(w, b.mul(step, lr))))


def _adagrad(b: Builder, g: Graph, pairs: Pairs, lr: Value, eps, weight_decay):
    for w, dw in pairs:
        dw = _decayed(b, w, dw, weight_decay)
        s = _state(g, w, "sum")  # the running sum of squared gradients
        s_new = b.add(s, b.mul(dw, dw))
        g.updates.append((s, s_new))
        g.updates.append((w, b.sub(w, b.div(b.mul(dw, lr), b.add(b.sqrt(s_new), eps)))))


def _rmsprop(b: Builder, g: Graph, pairs: Pairs, lr: Value, alpha, eps, momentum, centered, weight_decay):
    for w, dw in pairs:
        dw = _decayed(b, w, dw, weight_decay)
        var = _average(b, g, w, "square_avg", alpha, b.mul(dw, dw))
        if centered:  # the variance around the running mean gradient, not the raw second moment
            m_new = _average(b, g, w, "grad_avg", alpha, dw)
            var = b.sub(var, b.mul(m_new, m_new))
        step = b.div(dw, b.add(b.sqrt(var), eps))
        if momentum:
            v = _state(g, w, "velocity")
            step = b.add(b.mul(v, momentum), step)
            g.updates.append((v, step))
        g.updates.append((w, b.sub(w, b.mul(step, lr))))


def _bias_correction(b: Builder, g: Graph, lr: Value, name: str, beta: float) -> Value:
    """1 - beta^t after this step's update, from its state value."""
    c = Value(name, TensorType(lr.dtype, ()))
    g.state.append(Param(c, "zeros"))
    c_new = b.add(b.mul(c, beta), 1.0 - beta)
    g.updates.append((c, c_new))
    return c_new


def _adam(b: Builder, g: Graph, pairs: Pairs, lr: Value, beta1, beta2, eps, weight_decay, decoupled=False):
    # lr * m_hat / (sqrt(v_hat) + eps) as in PyTorch, the bias corrections folded into two scalars:
    # lr * sqrt(c2) / c1 * m / (sqrt(v) + eps * sqrt(c2)), with c = 1 - beta^t kept as state by
    # c <- c * beta + (1 - beta) from 0: 1 - pow(beta, t) would lose most digits to cancellation in f32
    c1, c2 = (_bias_correction(b, g, lr, name, beta) for name, beta in (("adam.c1", beta1), ("adam.c2", beta2)))
    root_c2 = b.sqrt(c2)
    lr_t = b.div(b.mul(lr, root_c2), c1)
    eps_t = b.mul(root_c2, eps)
    for w, dw in pairs:
        if not decoupled:
            dw = _decayed(b, w, dw, weight_decay)
        m_new = _average(b, g, w, "m", beta1, dw)
        v_new = _average(b, g, w, "v", beta2, b.mul(dw, dw))
        step = b.div(b.mul(m_new, lr_t), b.add(b.sqrt(v_new), eps_t))
        if weight_decay and decoupled:
            step = b.add(step, b.mul(w, b.mul(lr, weight_decay)))
        g.updates.append((w, b.sub(w, step)))


_EMIT: dict[str, Callable] = {
    "sgd": _sgd,
    "adagrad": _adagrad,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": functools.partial(_adam, decoupled=True),
}


def emit_optimizer(g: Graph, pairs: Pairs, name: str, args: dict[str, float], lr: Value) -> None:
    """Append the update nodes of optimizer `name` for (param, gradient) pairs to graph `g`."""
    hyper = {k: v for k, v in {**OPTIMIZERS[name], **args}.items() if k != "lr"}
    b = Builder(g, scope="update")
    _EMIT[name](b, g, pairs, lr, **hyper)
