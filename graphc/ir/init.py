"""Parameter initializers: the `= init()` of a .net `param` declaration, as distributions.

Each initializer resolves to a `Dist` (a constant fill; a normal, truncated normal or uniform
distribution; a random orthogonal matrix) for a param's shape; NumPy samples it here (a seeded generator, params drawing in declaration order) and
the C library of `graphc compile` samples the same distributions natively (graphc/codegen/capi.c).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from graphc.errors import GraphcError
from graphc.ir.graph import NP_DTYPES, Param


class Dist(NamedTuple):
    # "fill" (every element a), "normal" (mean a, std b), "truncated_normal" (mean a, std b, drawn
    # again outside 2 std), "uniform" ([a, b)), "orthogonal" (gain a; the param as a matrix of b rows
    # and size / b columns, whose rows or columns, the fewer, are orthonormal, times a)
    family: str
    a: float
    b: float = 0.0

TRUNCATE = 2.0  # truncated_normal's bound, in standard deviations (Keras', and PyTorch's at std 1)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return (shape[0] if shape else 1), (shape[0] if shape else 1)
    receptive = math.prod(shape[2:])
    # dense weights are [in, out]; conv weights [out, in, kh, kw]
    return (shape[0], shape[1]) if len(shape) == 2 else (shape[1] * receptive, shape[0] * receptive)


def _orthogonal(shape: tuple[int, ...], gain: float = 1.0) -> Dist:
    if len(shape) < 2:
        raise GraphcError(f"a param of 2 or more dims is needed, not {list(shape)}")
    return Dist("orthogonal", gain, shape[0])


def _uniform(variance3: float) -> Dist:
    """Uniform on [-limit, limit), limit = sqrt(variance3): its variance is variance3 / 3."""
    limit = math.sqrt(variance3)
    return Dist("uniform", -limit, limit)


# name -> (shape, **arguments) -> Dist
INITIALIZERS: dict[str, Callable[..., Dist]] = {
    "zeros": lambda shape: Dist("fill", 0.0),
    "ones": lambda shape: Dist("fill", 1.0),
    "constant": lambda shape, value=0.0: Dist("fill", value),
    "normal": lambda shape, std=1.0, mean=0.0: Dist("normal", mean, std),
    "uniform": lambda shape, low=-1.0, high=1.0: Dist("uniform", low, high),
    "truncated_normal": lambda shape, std=1.0, mean=0.0: Dist("truncated_normal", mean, std),
    "he_normal": lambda shape: Dist("normal", 0.0, math.sqrt(2.0 / _fans(shape)[0])),
    "he_uniform": lambda shape: _uniform(6.0 / _fans(shape)[0]),
    "xavier_uniform": lambda shape: _uniform(6.0 / sum(_fans(shape))),
    "xavier_normal": lambda shape: Dist("normal", 0.0, math.sqrt(2.0 / sum(_fans(shape)))),
    "orthogonal": _orthogonal,
}


def check_arguments(init: str, args: dict[str, float], shape: tuple[int, ...] = (1, 1)) -> str | None:
    """What is wrong with an initializer's arguments for a param of `shape`, if anything: NumPy
    (and the C library) need finite numbers, std >= 0 and low <= high; orthogonal() a matrix."""
    try:
        d = INITIALIZERS[init](shape, **args)
    except GraphcError as e:
        return e.message
    if not (math.isfinite(d.a) and math.isfinite(d.b)):
        return "its arguments must be finite numbers"
    if d.family in ("normal", "truncated_normal") and d.b < 0:
        return f"std must not be negative, got {d.b:g}"
    if d.family == "uniform" and d.a > d.b:
        return f"low ({d.a:g}) must not exceed high ({d.b:g})"
    if d.family == "uniform" and not math.isfinite(d.b - d.a):
        return "high - low is too large to draw from"
    return None


def distribution(p: Param) -> Dist:
    """The distribution `p`'s initializer draws its elements from."""
    fn = INITIALIZERS.get(p.init)
    if fn is None:
        raise GraphcError(f"unknown initializer {p.init}() (known: {', '.join(INITIALIZERS)})", p.loc)
    try:
        return fn(tuple(p.value.shape), **p.init_args)
    except TypeError:
        raise GraphcError(f"bad arguments for {p.init}(): {p.init_args}", p.loc) from None


def sample(d: Dist, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if d.family == "normal":
        return rng.normal(d.a, d.b, shape)
    if d.family == "truncated_normal":
        z = rng.standard_normal(shape)
        while (out := np.abs(z) > TRUNCATE).any():  # rejection: redraw what fell outside
            z[out] = rng.standard_normal(int(out.sum()))
        return d.a + d.b * z
    if d.family == "orthogonal":
        rows = int(d.b)
        cols = math.prod(shape) // rows
        q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
        q *= np.sign(np.diag(r))  # Q's signs follow R's: uniform over orthogonal matrices
        return d.a * (q if rows >= cols else q.T).reshape(shape)
    if d.family == "uniform":
        return rng.uniform(d.a, d.b, shape)
    return np.full(shape, d.a)


def init_params(params: list[Param], seed: int) -> dict[str, np.ndarray]:
    """Fresh arrays for `params`, reproducible from `seed` (each param draws in declaration order)."""
    rng = np.random.default_rng(seed)
    # np.array, not ascontiguousarray: that would turn a scalar (a step counter) into shape [1]
    return {p.value.name: np.array(sample(distribution(p), rng, p.value.dims),
                                   dtype=np.dtype(NP_DTYPES[p.value.dtype]), order="C") for p in params}
