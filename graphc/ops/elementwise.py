"""Elementwise math ops (with NumPy broadcasting): arithmetic, trigonometry, rounding, activations,
comparisons. gelu is written with erf or tanh (a decomposition that fuses like any elementwise chain)."""

from __future__ import annotations

import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Decompose, Elementwise
from graphc.ops.registry import OpDef, Trait, broadcast_shapes, float_type, register, require, sum_to


def _unary_shape(ts: list[TensorType], attrs: dict) -> TensorType:
    float_type(ts[0])
    return ts[0]


def _binary_shape(ts: list[TensorType], attrs: dict) -> TensorType:
    a, b = ts
    float_type(a, "left operand")
    float_type(b, "right operand")
    require(a.dtype == b.dtype, f"dtypes differ: {a} and {b}")
    return TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))


def unary(name: str, vjp, ref, expr, doc: str = "x: T[s] -> T[s]", traits: frozenset[Trait] = frozenset(),
          **defaults) -> None:
    register(OpDef(name, 1, _unary_shape, vjp, ref, Elementwise(expr), defaults, doc, traits))


def binary(name: str, vjp, ref, expr, doc: str = "a: T[s], b: T[t] -> T[broadcast(s, t)]") -> None:
    register(OpDef(name, 2, _binary_shape, vjp, ref, Elementwise(expr), {}, doc))


def _both(b, n, ga, gb):
    x, y = n.inputs
    return [sum_to(b, ga(), x.shape), sum_to(b, gb(), y.shape)]


binary("add", lambda b, n, g: _both(b, n, lambda: g, lambda: g),
       np.add, lambda s, x, y: s.add(x, y), "a: T[s], b: T[t] -> T[broadcast(s, t)] (infix `a + b`)")
binary("sub", lambda b, n, g: _both(b, n, lambda: g, lambda: b.neg(g)),
       np.subtract, lambda s, x, y: s.sub(x, y), "a: T[s], b: T[t] -> T[broadcast(s, t)] (infix `a - b`)")
binary("mul", lambda b, n, g: _both(b, n, lambda: b.mul(g, n.inputs[1]), lambda: b.mul(g, n.inputs[0])),
       np.multiply, lambda s, x, y: s.mul(x, y), "a: T[s], b: T[t] -> T[broadcast(s, t)] (infix `a * b`)")
binary("div", lambda b, n, g: _both(b, n, lambda: b.div(g, n.inputs[1]),
                                    lambda: b.neg(b.div(b.mul(g, n.out), n.inputs[1]))),
       np.divide, lambda s, x, y: s.div(x, y), "a: T[s], b: T[t] -> T[broadcast(s, t)] (infix `a / b`)")
binary("pow", lambda b, n, g: _both(
           b, n, lambda: b.mul(g, b.mul(n.inputs[1], b.pow(n.inputs[0], b.sub(n.inputs[1], 1.0)))),
           lambda: b.mul(g, b.mul(n.out, b.log(n.inputs[0])))),
       np.power, lambda s, x, y: s.pow(x, y))


def _extremum_vjp(keeps_greater: bool):
    """maximum passes g to a where a > b, minimum where it is not; the other operand gets the rest."""
    def vjp(b, n, g):
        where_a_greater = b.mul(g, b.gt(*n.inputs))
        rest = b.sub(g, where_a_greater)
        ga, gb = (where_a_greater, rest) if keeps_greater else (rest, where_a_greater)
        return _both(b, n, lambda: ga, lambda: gb)
    return vjp


binary("maximum", _extremum_vjp(True), np.maximum, lambda s, x, y: s.max(x, y),
       "a: T[s], b: T[t] -> T[broadcast(s, t)], the larger of a and b")
binary("minimum", _extremum_vjp(False), np.minimum, lambda s, x, y: s.min(x, y),
       "a: T[s], b: T[t] -> T[broadcast(s, t)], the smaller of a and b")
binary("gt", None, lambda x, y: (x > y).astype(x.dtype), lambda s, x, y: s.gt(x, y),
       "a: T[s], b: T[t] -> T[broadcast(s, t)], 1 where a > b else 0 (no gradient)")
binary("eq", None, lambda x, y: (x == y).astype(x.dtype), lambda s, x, y: s.eq(x, y),
       "a: T[s], b: T[t] -> T[broadcast(s, t)], 1 where a == b else 0 (no gradient)")

def _where_shape(ts: list[TensorType], attrs: dict) -> TensorType:
    c, a, b = ts
    for t, what in zip(ts, ("condition", "left operand", "right operand")):
        float_type(t, what)
    require(c.dtype == a.dtype == b.dtype, f"dtypes differ: {c}, {a} and {b}")
    return TensorType(a.dtype, broadcast_shapes(broadcast_shapes(c.shape, a.shape), b.shape))


def _where_vjp(b, n, g):
    c, x, y = n.inputs
    return [None, sum_to(b, b.where(c, g, 0.0), x.shape), sum_to(b, b.where(c, 0.0, g), y.shape)]


def _where_ref(c: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(c != 0, x, y).astype(x.dtype)


register(OpDef(
    "where", 3, _where_shape, _where_vjp, _where_ref,
    Elementwise(lambda s, c, x, y: s.select(c, x, y)), {},
    "c: T[s], a: T[t], b: T[u] -> T[broadcast(s, t, u)], a where c is not 0 else b (a mask such as "
    "gt(...) selects; no gradient for c)"))

unary("neg", lambda b, n, g: [b.neg(g)], np.negative, lambda s, x: s.neg(x), "x: T[s] -> T[s] (prefix `-x`)")
unary("exp", lambda b, n, g: [b.mul(g, n.out)], np.exp, lambda s, x: s.exp(x))
unary("log", lambda b, n, g: [b.div(g, n.inputs[0])], np.log, lambda s, x: s.log(x))
unary("sqrt", lambda b, n, g: [b.div(b.mul(g, 0.5), n.out)], np.sqrt, lambda s, x: s.sqrt(x))
unary("sin", lambda b, n, g: [b.mul(g, b.cos(n.inputs[0]))], np.sin, lambda s, x: s.sin(x))
unary("cos", lambda b, n, g: [b.neg(b.mul(g, b.sin(n.inputs[0])))], np.cos, lambda s, x: s.cos(x))
unary("floor", None, np.floor, lambda s, x: s.floor(x),
      "x: T[s] -> T[s], the largest whole number <= x (no gradient: piecewise constant)")
unary("tanh", lambda b, n, g: [b.mul(g, b.sub(1.0, b.mul(n.out, n.out)))], np.tanh,
      lambda s, x: s.tanh(x))


def _erf_ref(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[x.dtype])(x)  # NumPy has no erf


unary("erf", lambda b, n, g: [b.mul(g, b.mul(b.exp(b.neg(b.mul(*n.inputs, *n.inputs))), 2 / math.sqrt(math.pi)))],
      _erf_ref, lambda s, x: s.erf(x),
      "x: T[s] -> T[s], the error function: 2/sqrt(pi) times the integral of exp(-t^2) from 0 to x")
unary("sigmoid", lambda b, n, g: [b.mul(g, b.mul(n.out, b.sub(1.0, n.out)))],
      lambda x: 1 / (1 + np.exp(-x)),
      lambda s, x: s.div(s.const(1.0), s.add(s.const(1.0), s.exp(s.neg(x)))))
# relu makes no ties the max did not have: a saturating activation (sigmoid, or tanh in float) does
unary("relu", lambda b, n, g: [b.mul(g, b.gt(n.out, 0.0))], lambda x: np.maximum(x, 0),
      lambda s, x: s.max(x, s.const(0.0)), traits=frozenset({Trait.ORDER_PRESERVING}))
unary("leaky_relu",
      lambda b, n, g: [b.mul(g, b.add(b.mul(b.gt(n.inputs[0], 0.0), 1.0 - n.attrs["alpha"]),
                                      n.attrs["alpha"]))],
      lambda x, alpha: np.where(x > 0, x, alpha * x),
      lambda s, x, alpha: s.select(s.gt(x, s.const(0.0)), x, s.mul(x, s.const(alpha))),
      "x: T[s] -> T[s], x where x > 0 else alpha*x (alpha=0.01)", alpha=0.01)


# gelu(x) = x·Phi(x), Phi the standard normal CDF: exactly 0.5·x·(1 + erf(x/sqrt 2)), or with
# tanh=true PyTorch's approximate="tanh": 0.5·x·(1 + tanh(sqrt(2/pi)·(x + 0.044715·x³)))
_GELU_K, _GELU_C = math.sqrt(2 / math.pi), 0.044715


def _gelu_inner(b, x):
    """sqrt(2/pi)·(x + c·x³), the tanh form's argument."""
    return b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), _GELU_C)), _GELU_K)


def _gelu(b, x, tanh):
    phi2 = b.tanh(_gelu_inner(b, x)) if tanh else b.erf(b.mul(x, math.sqrt(0.5)))  # 2·Phi(x) - 1
    return b.mul(b.mul(x, 0.5), b.add(phi2, 1.0))


def _gelu_vjp(b, n, g):
    x = n.inputs[0]
    if n.attrs["tanh"]:  # d/dx: 0.5·(1 + t) + 0.5·x·(1 - t²)·sqrt(2/pi)·(1 + 3c·x²), t = tanh(inner)
        t = b.tanh(_gelu_inner(b, x))
        slope = b.mul(b.sub(1.0, b.mul(t, t)), b.mul(b.add(b.mul(b.mul(x, x), 3 * _GELU_C), 1.0), _GELU_K))
        d = b.mul(b.add(b.add(t, 1.0), b.mul(x, slope)), 0.5)
    else:  # d/dx: Phi(x) + x·phi(x), phi the standard normal density
        cdf = b.mul(b.add(b.erf(b.mul(x, math.sqrt(0.5))), 1.0), 0.5)
        d = b.add(cdf, b.mul(x, b.mul(b.exp(b.mul(b.mul(x, x), -0.5)), 1 / math.sqrt(2 * math.pi))))
    return [b.mul(g, d)]


def _gelu_ref(x: np.ndarray, tanh: bool) -> np.ndarray:
    if tanh:
        return 0.5 * x * (1 + np.tanh(_GELU_K * (x + _GELU_C * x ** 3)))
    return 0.5 * x * (1 + _erf_ref(x * math.sqrt(0.5)))


register(OpDef("gelu", 1, _unary_shape, _gelu_vjp, _gelu_ref, Decompose(_gelu), {"tanh": False},
               "x: T[s] -> T[s], x*Phi(x) with Phi the standard normal CDF: 0.5*x*(1 + erf(x/sqrt(2))), "
               "or with tanh=true 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3))) (PyTorch's "
               "approximate='none' / 'tanh')"))
