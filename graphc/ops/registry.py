"""The op registry: each primitive op's shape rule, vjp, NumPy reference and lowering, side by side."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, cast

from graphc.ir.graph import OPS, Builder, Dim, Graph, Node, ShapeError, TensorType, Value
from graphc.ops.lowering import Decompose, Lowered, Lowering


ShapeRule = Callable[[list[TensorType], dict], TensorType]
Vjp = Callable[[Builder, Node, Value], list["Value | None"]]


class Trait(Enum):
    """What passes and the runtime may rely on about an op, instead of knowing it by name."""

    ORDER_PRESERVING = "order-preserving"  # elementwise, non-decreasing, no new ties: f(max x) = max f(x)
    WINDOW_MAX = "window-max"              # the max of each window (gradient to its first max)
    LOSS = "loss"                          # its first operand is the model's prediction


# operand index -> the bound its integer values must stay below (labels below the class count)
IndexBounds = Callable[[list[TensorType], dict], dict[int, Dim]]


@dataclass(frozen=True)
class OpDef:
    name: str
    nargs: int                 # its tensor operands (0: any number, as a scan's)
    shape: ShapeRule
    vjp: Vjp | None            # None: the op has no gradient (explicitly)
    ref: Callable[..., Any]    # ref(*arrays, **attrs) -> np.ndarray
    lowering: Lowering         # how codegen sees it (ops/lowering.py)
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""              # the shape rule in words, for the language page
    traits: frozenset[Trait] = frozenset()
    operands: tuple[str, ...] = ()        # the operands' names, where they are shown (a loss's prediction)
    indices: IndexBounds | None = None    # integer operands that index something, and their bounds
    dtype_attr: str | None = None         # the attribute naming the output's float dtype

    def attributes(self) -> tuple[list[str], set[str]]:
        """The op's attribute names and the required ones (those without a default).

        `ref(*arrays, **attrs)` takes each attribute as a parameter after the arrays, so required
        attributes (reshape's shape) are read from it; parameters with a default there (NumPy
        ufunc options such as `out`) are not attributes.
        """
        names = list(self.defaults)
        try:
            params = list(inspect.signature(self.ref).parameters.values())[self.nargs:]
        except (TypeError, ValueError):  # a callable without a signature
            params = []
        names += [p.name for p in params if p.default is p.empty and p.name not in names
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        return names, {n for n in names if n not in self.defaults}

    def check_attributes(self, attrs: dict[str, Any]) -> None:
        """Attributes whose default is a bool, a float or a string must be given as one (an int
        stands for a float); the shape rule checks the others (axes, shapes, window sizes)."""
        for name, default in self.defaults.items():
            v = attrs.get(name, default)
            kind = next((k for k in (bool, float, str) if isinstance(default, k)), None)
            ok = (kind is None or isinstance(v, kind) or
                  (kind is float and isinstance(v, int) and not isinstance(v, bool)))
            require(ok, f"{name} must be {_KIND_WORDS[kind] if kind else 'given'}, got {show(v)}")


_KIND_WORDS = {bool: "true or false", float: "a number", str: "a name"}

REGISTRY = cast("dict[str, OpDef]", OPS)  # the IR's table of ops, seen with their whole definitions


def lowered(n: Node) -> Lowered:
    """The descriptor codegen compiles node `n` from (no composite op is left by then)."""
    rule = REGISTRY[n.op].lowering
    if isinstance(rule, Decompose):
        raise ValueError(f"{n.op} is decomposed before it is lowered")
    return rule.at(n)


def declared_indices(n: Node) -> dict[int, Dim]:
    """Node `n`'s integer operands that index something, and the bounds their values stay below."""
    indices = REGISTRY[n.op].indices
    return indices([x.type for x in n.inputs], n.attrs) if indices else {}


def index_bound(g: Graph, v: Value) -> Dim | None:
    """The bound the integer values of `v` must stay below, as the ops reading it declare (the
    smallest, if several do): labels below the class count, token ids below the table's rows."""
    bounds = [bound for n in g.nodes for i, bound in declared_indices(n).items() if n.inputs[i] is v]
    known = [b for b in bounds if isinstance(b, int)]
    return min(known) if known else bounds[0] if bounds else None


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
    shown = f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast"
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        require(x == y or x == 1 or y == 1, shown)
        out.append(y if x == 1 else x)
    return tuple(out)


def is_int(v: Any) -> bool:
    """A whole number, not true/false (which Python counts as ints)."""
    return isinstance(v, int) and not isinstance(v, bool)


def norm_axes(axes: Any, rank: int, name: str = "axes") -> tuple[int, ...]:
    """`axes` (one axis, a list of them, or None: all) as sorted non-negative axes; `name` is the
    attribute's name in messages."""
    if axes is None:
        return tuple(range(rank))
    axes = (axes,) if not isinstance(axes, tuple) else axes
    for a in axes:
        require(is_int(a), f"{name} must be a whole number or a list of them, got {show(a)}")
        require(-rank <= a < rank, f"axis {a} out of range for rank {rank}")
    return tuple(sorted({a % rank for a in axes}))


def shape_attr(shape: Any, inferred: bool = False) -> list[Dim]:
    """A `shape=[...]` attribute as a list of dims: positive sizes or symbolic dims, and where
    `inferred`, one -1."""
    require(isinstance(shape, tuple), f"shape must be a list of dims, got {show(shape)}")
    for d in shape:
        require(isinstance(d, str) or (is_int(d) and (d > 0 or (inferred and d == -1))),
                f"shape {show(shape)} has {show(d)}; a dim is a positive whole number"
                + (" (or -1, inferred)" if inferred else ""))
    return list(shape)


def _fmt(shape: tuple[Dim, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def show(v: Any) -> str:
    """An attribute value as the .net language writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(show(x) for x in v) + "]"
    return f'"{v}"' if isinstance(v, str) and not v.isidentifier() else str(v)


def sum_to(b: Builder, g: Value, shape: tuple[Dim, ...]) -> Value:
    """Undo broadcasting in a gradient: sum g over the axes that were broadcast up to g's shape."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.type.rank - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    # with no leading axes, the size-1 axes stay (no reshape between a row sum and its broadcast)
    s = b.sum(g, axes=axes, keepdims=not lead)
    return s if tuple(s.shape) == tuple(shape) else b.reshape(s, shape=tuple(shape))
