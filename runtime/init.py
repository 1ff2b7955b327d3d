"""Parameter initializers (seeded NumPy RNG): the `= init()` of a .net `param` declaration."""

from __future__ import annotations

import math

import numpy as np

from graphc.errors import GraphcError
from graphc.ir.graph import NP_DTYPES, Param


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) < 2:
        return (shape[0] if shape else 1), (shape[0] if shape else 1)
    receptive = math.prod(shape[2:])
    # dense weights are [in, out]; conv weights [out, in, kh, kw]
    return (shape[0], shape[1]) if len(shape) == 2 else (shape[1] * receptive, shape[0] * receptive)


INITIALIZERS = {
    "zeros": lambda rng, shape: np.zeros(shape),
    "ones": lambda rng, shape: np.ones(shape),
    "constant": lambda rng, shape, value=0.0: np.full(shape, value),
    "normal": lambda rng, shape, std=1.0, mean=0.0: rng.normal(mean, std, shape),
    "uniform": lambda rng, shape, low=-1.0, high=1.0: rng.uniform(low, high, shape),
    "he_normal": lambda rng, shape: rng.normal(0.0, math.sqrt(2.0 / _fans(shape)[0]), shape),
    "xavier_uniform": lambda rng, shape: rng.uniform(-1, 1, shape) * math.sqrt(6.0 / sum(_fans(shape))),
}


def init_params(params: list[Param], seed: int) -> dict[str, np.ndarray]:
    """Fresh arrays for `params`, reproducible from `seed` (each param draws in declaration order)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in params:
        fn = INITIALIZERS.get(p.init)
        if fn is None:
            raise GraphcError(f"unknown initializer {p.init}() (known: {', '.join(INITIALIZERS)})", p.loc)
        try:
            x = fn(rng, tuple(p.value.shape), **p.init_args)
        except TypeError:
            raise GraphcError(f"bad arguments for {p.init}(): {p.init_args}", p.loc) from None
        out[p.value.name] = np.ascontiguousarray(x, dtype=NP_DTYPES[p.value.dtype])
    return out
