"""Counter-based random numbers in generated code, and the op that uses them: dropout.

Each element's uniform number is a pure function of (seed, step counter, element position): the
hash below mixes them with 32-bit integer arithmetic. It is written once against the integer part
of the Scalar vocabulary and run twice: by codegen in the fused loop, and by `_NumpyInts` in the
NumPy reference, so the reference reproduces the generated masks bit for bit. Nothing is stored:
the backward pass recomputes the same mask from the same counter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Elementwise
from graphc.ops.registry import OpDef, float_type, is_int, register, require, show

# lowbias32 (C. Wellons, "Hash function prospector"): a bijection on 32 bits with low bias
_ROUNDS = ((16, 0x7FEB352D), (15, 0x846CA68B))


def _mix(s: Any, x: Any) -> Any:
    for shift, mult in _ROUNDS:
        x = s.imul(s.ixor(x, s.ishr(x, s.u32(shift))), s.u32(mult))
    return s.ixor(x, s.ishr(x, s.u32(16)))


def _mix_int(x: int) -> int:
    """_mix on a Python int: folds the compile-time seed into one constant."""
    for shift, mult in _ROUNDS:
        x = ((x ^ (x >> shift)) * mult) & 0xFFFFFFFF
    return x ^ (x >> 16)


def mix_seed(seed: int, rank: int) -> int:
    """A seed for rank `rank` of a data-parallel run: distinct ranks draw distinct numbers."""
    return _mix_int((seed ^ _mix_int(rank + 1)) & 0xFFFFFFFF)


def uniform(s: Any, step: Any, index: Any, seed: int) -> Any:
    """A float in [0, 1) per element: hash(hash(seed) ^ step) ^ position, hashed again."""
    key = _mix(s, s.ixor(s.to_u32(step), s.u32(_mix_int(seed & 0xFFFFFFFF))))
    return s.unit(_mix(s, s.ixor(key, index)))


class _NumpyInts:
    """The integer Scalar methods `uniform` uses, on NumPy uint32 arrays (arithmetic wraps)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def u32(self, x: int) -> np.ndarray:
        return np.asarray(x, np.uint32)

    def to_u32(self, a) -> np.ndarray:
        return np.asarray(a).astype(np.int64).astype(np.uint32)

    def ixor(self, a, b) -> np.ndarray:
        return np.bitwise_xor(a, b)

    def ishr(self, a, b) -> np.ndarray:
        return np.right_shift(a, b)

    def imul(self, a, b) -> np.ndarray:
        return np.multiply(a, b, dtype=np.uint32)

    def unit(self, a) -> np.ndarray:
        return (np.right_shift(a, np.uint32(8)).astype(self.dtype) * self.dtype.type(2.0 ** -24))


def _dropout_ref(x: np.ndarray, step: np.ndarray, p: float, seed: int) -> np.ndarray:
    index = np.arange(x.size, dtype=np.uint32).reshape(x.shape)
    u = uniform(_NumpyInts(x.dtype), step, index, seed)
    return np.where(u < x.dtype.type(p), x.dtype.type(0), x * x.dtype.type(1 / (1 - p)))


def _dropout_expr(s, x, step, p: float, seed: int):
    u = uniform(s, step, s.flat_index(), seed)
    return s.select(s.gt(s.const(p), u), s.const(0.0), s.mul(x, s.const(1 / (1 - p))))


def _dropout_shape(ts: list[TensorType], attrs: dict) -> TensorType:
    x, step = ts
    float_type(x)
    require(step.is_float and step.rank == 0, f"the step counter must be a float scalar, not {step}")
    p = attrs["p"]
    require((is_int(p) or isinstance(p, float)) and 0 <= p < 1,
            f"p must be a number in [0, 1), got {show(p)}")
    require(is_int(attrs["seed"]), f"seed must be a whole number, got {show(attrs['seed'])}")
    return x


register(OpDef(
    "dropout", 2, _dropout_shape,
    # linear in x with the same mask: the gradient is dropout of g at the same step
    lambda b, n, g: [b.dropout(g, n.inputs[1], **n.attrs), None],
    _dropout_ref, Elementwise(_dropout_expr), {"p": 0.5, "seed": 0},
    "x: T[s], step: T[] -> T[s], each element zeroed with probability p, else scaled by 1/(1-p); "
    "the mask is a hash of (seed, step, position). The `dropout` layer passes the step counter"))
