"""The op registry: each primitive op's shape rule, vjp, NumPy reference and lowering, side by side."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from graphc.ir.graph import Builder, Dim, Node, TensorType, Value
from graphc.ops.lowering import Lowering


class ShapeError(Exception):
    """A shape or dtype rule was violated; the builder adds the source position."""


ShapeRule = Callable[[list[TensorType], dict], TensorType]
Vjp = Callable[[Builder, Node, Value], list["Value | None"]]


@dataclass(frozen=True)
class OpDef:
    name: str
    nargs: int
    shape: ShapeRule
    vjp: Vjp | None            # None: the op has no gradient (explicitly)
    ref: Callable[..., Any]    # ref(*arrays, **attrs) -> np.ndarray
    lower: Lowering
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""              # the shape rule in words, for the language page


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    assert opdef.name not in REGISTRY, opdef.name
    REGISTRY[opdef.name] = opdef
    return opdef


# ---- shape helpers shared by the op definitions ----

def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeError(msg)


def float_type(t: TensorType, what: str = "operand") -> None:
    require(t.is_float, f"{what} must be a float tensor, got {t}")


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        require(x == y or x == 1 or y == 1, f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


def norm_axes(axes: Any, rank: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    for a in axes:
        require(-rank <= a < rank, f"axis {a} out of range for rank {rank}")
    return tuple(sorted({a % rank for a in axes}))


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def sum_to(b: Builder, g: Value, shape: tuple[Dim, ...]) -> Value:
    """Undo broadcasting in a gradient: sum g over the axes that were broadcast up to g's shape."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.type.rank - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    s = b.sum(g, axes=axes, keepdims=False)
    return s if tuple(s.shape) == tuple(shape) else b.reshape(s, shape=tuple(shape))
