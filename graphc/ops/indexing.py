"""Ops whose indices come from data, and calls out of the step: gather, scatter_add, extern_call.

- `gather(table, idx)` picks rows of `table` (axis 0) at the i32 indices `idx`: an elementwise read
  through an `Indexed` map, so it fuses with what reads its result (an embedding feeding a layer).
- `scatter_add(g, idx, rows)` is its adjoint: each index position's row of `g` added into a zeroed
  table of `rows` rows at the row its index names (repeated indices add up), race-free and in the
  same order on any number of threads.
- `extern_call(x, slot)` hands a copy of x to a function the runtime binds to `slot`
  (`Step.bind_extern`), which updates it in place: an allreduce of the gradients, a user callback.
  Autodiff sees an identity (the callee is opaque: gradients pass straight through it), and like
  every op it is taken as pure: an identical second call is reused.
"""

from __future__ import annotations

import math

import numpy as np

from graphc.ir.graph import TensorType
from graphc.ops.lowering import Described, Elementwise, Extern, Indexed, Scatter
from graphc.ops.registry import OpDef, float_type, is_int, register, require, show


def _indices(idx: TensorType, what: str = "indices") -> None:
    require(idx.dtype == "i32", f"{what} must be i32, got {idx}")


def _gather_shape(ts, attrs):
    table, idx = ts
    require(table.rank >= 1, f"table must have a row axis, got {table}")
    _indices(idx)
    return TensorType(table.dtype, tuple(idx.shape) + tuple(table.shape[1:]))


def _gather_maps(ts, out, attrs):
    s = ts[1].rank  # the output's leading axes are idx's, its trailing ones a table row's
    return [(Indexed(1), *range(s, out.rank)), tuple(range(s))]


register(OpDef(
    "gather", 2, _gather_shape,
    lambda b, n, g: [b.scatter_add(g, n.inputs[1], rows=n.inputs[0].shape[0]), None],
    lambda table, idx: table[idx],
    Elementwise(lambda s, row, i: row, _gather_maps),
    {}, "table: T[v, d...], idx: i32[s] -> T[s, d...], the row idx of table at each index "
        "(an index outside [0, v) is an error when the step runs)",
    indices=lambda ts, attrs: {1: ts[0].shape[0]}))


def _scatter_shape(ts, attrs):
    g, idx = ts
    float_type(g, "values")
    _indices(idx)
    rows = attrs["rows"]
    require(isinstance(rows, str) or is_int(rows) and rows > 0, f"rows must be a positive dim, got {show(rows)}")
    require(tuple(g.shape[:idx.rank]) == tuple(idx.shape),
            f"values {g} must start with the indices' shape {list(idx.shape)}")
    return TensorType(g.dtype, (rows,) + tuple(g.shape[idx.rank:]))


def _scatter_ref(g, idx, rows):
    out = np.zeros((rows,) + g.shape[idx.ndim:], g.dtype)
    np.add.at(out, idx, g)  # in index order, as the kernel adds
    return out


def _scatter(n) -> Scatter:
    out, idx = n.out.type, n.inputs[1].type
    return Scatter(out.shape[0], idx.size(), math.prod(out.shape[1:]))


register(OpDef(
    "scatter_add", 2, _scatter_shape,
    lambda b, n, g: [b.gather(g, n.inputs[1]), None],
    _scatter_ref, Described(_scatter), {},
    "values: T[s, d...], idx: i32[s], rows -> T[rows, d...], zeros plus each index position's "
    "values added at row idx (an index outside [0, rows) is an error when the step runs)",
    indices=lambda ts, attrs: {1: attrs["rows"]}))


def _extern_shape(ts, attrs):
    slot = attrs["slot"]
    require(isinstance(slot, str) and slot.isidentifier(), f"slot must be a name, got {show(slot)}")
    return ts[0]


register(OpDef(
    "extern_call", 1, _extern_shape,
    lambda b, n, g: [g],
    lambda x, slot: x.copy(),  # what a callee that leaves the values gives
    Described(lambda n: Extern(n.attrs["slot"])), {},
    "x: T[s], slot -> T[s], x after the function bound to slot updated it in place "
    "(Step.bind_extern; the gradient passes through unchanged)"))
