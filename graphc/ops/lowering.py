"""How codegen sees an op: the small vocabulary the registry speaks (no llvmlite here).

An op's definition holds a lowering rule; `rule.at(node)` gives the node's descriptor, which carries
everything codegen needs (codegen reads no op attributes):
- `Elementwise(expr, maps, fill)` -> `Pointwise`: one scalar expression per output element.
  `expr(s, *xs, **attrs)` builds it from scalar operands with the methods of a `Scalar` builder `s`
  (below). `maps` says, per input, which output axis each input axis follows (None: a size-1 axis
  that is broadcast; an `Affine`: an index computed from several output indices, reading
  `fill(attrs)` outside the input: windows, padding, slices; an `Indexed(j)`: data-dependent, the
  value of input j, an i32 tensor, read at the output index through j's own map: a gather); the
  default is NumPy broadcasting. Elementwise chains fuse into one loop nest, gathers included.
- `Reduce(kind)` -> `Reduction(kind, axes)`: sum or max over axes; fuses its elementwise prologue.
- `Described(describe)`: the node states its descriptor, one of these four:
  - `Contraction(m, n, k, ta, tb, batch)`: run by the generated GEMM, once per product of its batch axes.
  - `Scatter(rows, positions, width)`: a zeroed [rows, width] output to
    which each index position adds its row of `width` values at the row its index names; threads
    split the width, never the positions, so no two add into one element and every run (any thread
    count) sums in the same order.
  - `Extern(slot)`: the input copied to the output, then a call to the function
    whose pointer sits in the step table's slot `extern:<slot>`, given the output's address, element
    count and dtype code (its index in DTYPES), to update it in place (an allreduce, a callback).
  - `Loop(body, carries, xs, reverse)`: a scan (ops/control.py): the body graph run once per step of
    its sequences, compiled once whatever their length.
- `View(offset)`: the output aliases the input's buffer from element `offset` on (reshape: 0).
- `Pack()`: the operands, flattened, one after another in the output. The memory plan places an
  operand whose producer can write it there inside the output (gradients gathered for one
  allreduce cost no copy); the kernel copies the others.
- `Decompose(fn)`: the op is rewritten into other ops before scheduling; `fn(b, *inputs, **attrs)`
  emits them with a Builder and returns the result value. It has no descriptor.

A data-dependent index (an `Indexed` read, a scatter's row) is checked whatever the build: one
outside [0, size) reads row 0 (a scatter skips it) and the kernel records the fault in the table's
`fault` slot, which the runtime turns into an error naming the op, the index and the range after
the step's call. Generated code never touches memory outside its buffers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Protocol

from graphc.ir.graph import Node


class Scalar(Protocol):
    """Scalar operations an elementwise expression may use; codegen implements them in LLVM."""

    def const(self, x: float) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def sub(self, a: Any, b: Any) -> Any: ...
    def mul(self, a: Any, b: Any) -> Any: ...
    def div(self, a: Any, b: Any) -> Any: ...
    def neg(self, a: Any) -> Any: ...
    def exp(self, a: Any) -> Any: ...
    def log(self, a: Any) -> Any: ...
    def sqrt(self, a: Any) -> Any: ...
    def pow(self, a: Any, b: Any) -> Any: ...
    def sin(self, a: Any) -> Any: ...
    def cos(self, a: Any) -> Any: ...
    def floor(self, a: Any) -> Any: ...
    def tanh(self, a: Any) -> Any: ...
    def erf(self, a: Any) -> Any: ...
    def max(self, a: Any, b: Any) -> Any: ...
    def min(self, a: Any, b: Any) -> Any: ...
    def gt(self, a: Any, b: Any) -> Any: ...      # 1.0 where a > b else 0.0
    def eq(self, a: Any, b: Any) -> Any: ...      # 1.0 where a == b else 0.0
    def select(self, c: Any, a: Any, b: Any) -> Any: ...  # a where c != 0 else b
    def to_float(self, a: Any) -> Any: ...        # an integer operand as the kernel's float type
    def index(self, axis: int) -> Any: ...        # the output index along `axis`, as a float
    # 32-bit unsigned integers with wrapping arithmetic, for counter-based random numbers
    def u32(self, x: int) -> Any: ...
    def to_u32(self, a: Any) -> Any: ...          # a float operand truncated toward zero, modulo 2^32
    def flat_index(self) -> Any: ...              # the output element's row-major position
    def ixor(self, a: Any, b: Any) -> Any: ...
    def ishr(self, a: Any, b: Any) -> Any: ...    # logical shift right
    def imul(self, a: Any, b: Any) -> Any: ...
    def unit(self, a: Any) -> Any: ...            # its top 24 bits / 2^24: a float in [0, 1), exact


@dataclass(frozen=True)
class Affine:
    """An input axis indexed by (sum of coef * output index over `terms` + offset) / div. Where that is
    not a whole number in [0, size), the operand reads as the op's fill value instead."""

    terms: tuple[tuple[int, int], ...]  # (output axis, coefficient)
    offset: int = 0
    div: int = 1


@dataclass(frozen=True)
class Indexed:
    """An input axis indexed by the value of the node's input `operand` (i32), read at the output
    index through that operand's own map. The map's other entries are output axes or None."""

    operand: int


Map = tuple["int | None | Affine | Indexed", ...]
Maps = Callable[[list, Any, dict], list[Map]]


@dataclass(frozen=True)
class Pointwise:
    """A node's elementwise lowering: `expr(s, *scalars)` per output element, input i read through
    `maps[i]`, an `Affine` access outside its input reading `fill`."""

    expr: Callable[..., Any]
    maps: tuple[Map, ...]
    fill: float


@dataclass(frozen=True)
class Elementwise:
    expr: Callable[..., Any]
    maps: Maps | None = None
    fill: Callable[[dict], float] = lambda attrs: 0.0  # what an Affine access reads outside its input

    def at(self, n: Node) -> Pointwise:
        maps = (self.maps or broadcast_maps)([v.type for v in n.inputs], n.out.type, n.attrs)
        return Pointwise(functools.partial(self.expr, **n.attrs), tuple(maps), self.fill(n.attrs))


class ReduceKind(Enum):
    SUM = "sum"
    MAX = "max"


@dataclass(frozen=True)
class Reduction:
    """A node's reduction of its one input over `axes` (sorted, non-negative)."""

    kind: ReduceKind
    axes: tuple[int, ...]


@dataclass(frozen=True)
class Reduce:
    kind: ReduceKind
    axes: Callable[[Node], tuple[int, ...]]  # the node's reduced axes, sorted and non-negative

    def at(self, n: Node) -> Reduction:
        return Reduction(self.kind, self.axes(n))


@dataclass(frozen=True)
class Contraction:
    """C[m, n] = op(A) · op(B) over k, A stored [m, k] (or [k, m] where `ta`), B stored [k, n] (or
    [n, k] where `tb`), all row-major and dense; for each index of the `batch` axes, one such product
    at the operands' offsets: per axis (size, A's stride, B's stride, C's stride) in elements, a
    stride of 0 where that operand is broadcast."""

    m: int
    n: int
    k: int
    ta: bool
    tb: bool
    batch: tuple[tuple[int, int, int, int], ...] = ()

    @property
    def count(self) -> int:
        """The products computed (1 without batch axes)."""
        return math.prod(size for size, *_ in self.batch)

    @property
    def lda(self) -> int:
        return self.m if self.ta else self.k

    @property
    def ldb(self) -> int:
        return self.k if self.tb else self.n

    @property
    def macs(self) -> int:
        return self.count * self.m * self.n * self.k


@dataclass(frozen=True)
class Scatter:
    """out[rows, width] = 0, then out[idx[i], :] += g[i, :] for i in [0, positions) in order, with g
    stored [positions, width] and idx [positions] (i32), all row-major and dense."""

    rows: int
    positions: int
    width: int


@dataclass(frozen=True)
class Extern:
    """out = the input, then a call to the function in the table's slot `extern:<slot>` that
    updates out in place."""

    slot: str


@dataclass(frozen=True)
class Loop:
    """A scan: the node's inputs are `carries` initial carries, `xs` sequences (stepped along axis 0,
    from the last step where `reverse`) and loop-invariant operands, the body's inputs in that
    order; its outputs are the new carries, then per-step values stacked along a new axis 0. Each
    node of the scan is one of those results (ops/control.py)."""

    body: Any  # the body Graph (graphc.ir.graph; kept opaque here like the rest of this vocabulary)
    carries: int
    xs: int
    reverse: bool


@dataclass(frozen=True)
class Described:
    """The rule of an op whose node states its own descriptor: `describe(node)` (a contraction,
    a scatter, an external call, a loop, a view at an offset)."""

    describe: Callable[[Node], "Contraction | Scatter | Extern | Loop | View"]

    def at(self, n: Node) -> "Contraction | Scatter | Extern | Loop | View":
        return self.describe(n)


@dataclass(frozen=True)
class View:
    offset: int = 0  # in elements

    def at(self, n: Node) -> "View":
        return self


@dataclass(frozen=True)
class Pack:
    def at(self, n: Node) -> "Pack":
        return self


@dataclass(frozen=True)
class Decompose:
    fn: Callable[..., Any]


Lowering = Elementwise | Reduce | Described | View | Pack | Decompose  # an op's rule
Lowered = Pointwise | Reduction | Contraction | Scatter | Extern | Loop | View | Pack  # a node's descriptor


def broadcast_maps(in_types: list, out_type: Any, attrs: dict) -> list[Map]:
    """NumPy broadcasting: trailing axes align; size-1 input axes under larger output axes broadcast."""
    maps = []
    for t in in_types:
        off = out_type.rank - t.rank
        maps.append(tuple(None if (d == 1 and out_type.shape[off + i] != 1) else off + i
                          for i, d in enumerate(t.shape)))
    return maps
