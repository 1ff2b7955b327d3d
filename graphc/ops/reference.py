"""A graph evaluated with NumPy through each op's reference: the meaning codegen is checked against."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from graphc.ir.graph import NP_DTYPES, Graph, Value
from graphc.ops.registry import REGISTRY


def evaluate(g: Graph, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`g`'s outputs, in order, for `args` fed to its leaves (inputs, params, state) in order."""
    env: dict[Value, np.ndarray] = dict(zip(g.leaves(), args))

    def at(v: Value) -> np.ndarray:
        return np.full(v.dims, v.const, NP_DTYPES[v.dtype]) if v.const is not None else env[v]

    for n in g.nodes:
        out = REGISTRY[n.op].ref(*map(at, n.inputs), **n.attrs)
        env[n.out] = np.asarray(out).reshape(n.out.dims)
    return [at(v) for v in g.outputs.values()]
