"""Optimizers as IR: each emits the update of every param (and its state) as graph nodes.

The learning rate is a runtime scalar input (`lr`), so the trainer can change it (schedules, --lr)
without recompiling; the other hyperparameters are compile-time constants.
"""

from __future__ import annotations

from typing import Callable

from graphc.ir.graph import Builder, Graph, Param, TensorType, Value

# name -> {argument: default}; `lr` has no default: the train block or --lr must give it
OPTIMIZERS: dict[str, dict[str, float | None]] = {
    "sgd": {"lr": None, "momentum": 0.0, "nesterov": 0.0, "weight_decay": 0.0},
    "adam": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


def _state(g: Graph, like: Value, suffix: str) -> Value:
    v = Value(f"{like.name}.{suffix}", like.type)
    g.state.append(Param(v, "zeros"))
    return v


def _sgd(b: Builder, g: Graph, pairs, lr: Value, momentum, nesterov, weight_decay):
    for w, dw in pairs:
        if weight_decay:
            dw = b.add(dw, b.mul(w, weight_decay))
        step = dw
        if momentum:
            v = _state(g, w, "velocity")
            v_new = b.add(b.mul(v, momentum), dw)
            g.updates.append((v, v_new))
            step = b.add(dw, b.mul(v_new, momentum)) if nesterov else v_new
        g.updates.append((w, b.sub(w, b.mul(step, lr))))


def _adam(b: Builder, g: Graph, pairs, lr: Value, beta1, beta2, eps, weight_decay, decoupled=False):
    t = Value("adam.t", TensorType(lr.dtype, ()))
    g.state.append(Param(t, "zeros"))
    t_new = b.add(t, 1.0)
    g.updates.append((t, t_new))
    # bias corrections folded into one scalar step size
    lr_t = b.div(b.mul(lr, b.sqrt(b.sub(1.0, b.pow(b.const(beta2, lr.dtype), t_new)))),
                 b.sub(1.0, b.pow(b.const(beta1, lr.dtype), t_new)))
    for w, dw in pairs:
        if weight_decay and not decoupled:
            dw = b.add(dw, b.mul(w, weight_decay))
        m, v = _state(g, w, "m"), _state(g, w, "v")
        m_new = b.add(b.mul(m, beta1), b.mul(dw, 1.0 - beta1))
        v_new = b.add(b.mul(v, beta2), b.mul(b.mul(dw, dw), 1.0 - beta2))
        g.updates += [(m, m_new), (v, v_new)]
        step = b.div(b.mul(m_new, lr_t), b.add(b.sqrt(v_new), eps))
        if weight_decay and decoupled:
            step = b.add(step, b.mul(w, b.mul(lr, weight_decay)))
        g.updates.append((w, b.sub(w, step)))


_EMIT: dict[str, Callable] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": lambda *a, **k: _adam(*a, **k, decoupled=True),
}


def emit_optimizer(g: Graph, pairs: list[tuple[Value, Value]], name: str,
                   args: dict[str, float], lr: Value) -> None:
    """Append the update nodes of optimizer `name` for (param, gradient) pairs to graph `g`."""
    hyper = {k: v for k, v in {**OPTIMIZERS[name], **args}.items() if k != "lr"}
    b = Builder(g, scope="update")
    _EMIT[name](b, g, pairs, lr, **hyper)
