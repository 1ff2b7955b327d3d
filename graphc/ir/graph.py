"""The typed graph IR: tensor types, SSA values, nodes and graphs, and the builder that adds nodes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, cast

import numpy as np

from graphc.errors import GraphcError, InternalError, Loc

Dim = int | str  # a symbolic dim (e.g. "B") until bound
DTYPES = ("f32", "f64", "i32")
NP_DTYPES = {"f32": np.float32, "f64": np.float64, "i32": np.int32}
MAX_ELEMENTS = 2**32
LR = "lr"  # the learning-rate input a training step takes: autodiff adds it, the runtime feeds it


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in ("f32", "f64")

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape of a bound type, as whole numbers. Binding checks every shape once (and the
        verifier of a schedule's graph again); stages after it read `dims`, not `shape`."""
        return cast("tuple[int, ...]", self.shape)

    def size(self) -> int:
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                raise ValueError(f"size of unbound type {self}")
            n *= d
        return n

    def check_size(self, loc: Loc | None = None) -> "TensorType":
        """Itself, if its known dims hold at most MAX_ELEMENTS elements (so every index and byte
        offset fits the generated code's 64-bit arithmetic with room to spare)."""
        n = math.prod(d for d in self.shape if isinstance(d, int))
        if n > MAX_ELEMENTS:
            raise GraphcError(f"{self} has {n} elements; a tensor holds at most 2^32", loc)
        return self

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


class Value:
    """An SSA value. Produced by a node, or a graph input/param/state, or a literal constant
    (`const`: a number every element equals; codegen emits it inline, never in memory)."""

    __slots__ = ("name", "type", "producer", "const")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None,
                 const: float | None = None) -> None:
        self.name = name
        self.type = type
        self.producer = producer
        self.const = const

    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dims(self) -> tuple[int, ...]:
        return self.type.dims

    @property
    def node(self) -> "Node":
        """The node computing this value (a leaf or a literal has none)."""
        if self.producer is None:
            raise InternalError(f"{self.name} is not computed by a node")
        return self.producer

    @property
    def dtype(self) -> str:
        return self.type.dtype

    def ref(self) -> str:
        """How the value is written where it is used."""
        return repr(self.const) if self.const is not None else self.name

    def __repr__(self) -> str:
        return f"{self.ref()}: {self.type}"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    attrs: dict[str, Any]
    out: Value
    loc: Loc | None = None
    scope: str = ""  # the layer instance (e.g. "fc1") the node came from
    grad_of: tuple["Node", int] | None = None  # backward nodes: (forward node, input index)


@dataclass
class Param:
    value: Value
    init: str  # initializer name: zeros, ones, normal, uniform, he_normal, xavier_uniform, constant
    init_args: dict[str, float] = field(default_factory=dict)
    loc: Loc | None = None


@dataclass
class Input:
    value: Value
    nograd: bool = False
    default: float | None = None  # scalar graphs (apples.net) give inputs a value
    loc: Loc | None = None
    # `= pixels(255)`: the data is divided by this before it is fed (the runtime applies it, and
    # saves it with the params, so evaluation and prediction scale new data the same way)
    scale: float | None = None


@dataclass
class Graph:
    """Inputs, params, state, nodes in topological order, named outputs and in-place updates."""

    name: str
    inputs: list[Input] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    # buffers the step updates in place but does not train: optimizer moments, step counter,
    # running statistics (each starts at its initializer)
    state: list[Param] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: dict[str, Value] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()  # names of outputs that are metrics (no gradient)
    loss: str | None = None        # name of the output that is differentiated
    updates: list[tuple[Value, Value]] = field(default_factory=list)  # (param or state, its new value)
    dims: dict[str, int] = field(default_factory=dict)  # bound symbolic dims
    _count: int = 0

    def fresh(self, prefix: str = "%") -> str:
        name = f"{prefix}{self._count}"
        self._count += 1
        return name

    def continue_numbering(self) -> None:
        """For a graph read back from text or JSON: fresh names follow its highest %N."""
        names = [n.out.name for n in self.nodes]
        numbered = [int(k[1:]) for k in names if k.startswith("%") and k[1:].isdigit()]
        self._count = max(numbered, default=-1) + 1

    def loss_name(self) -> str:
        """The name of the differentiated output."""
        if self.loss is None:
            raise GraphcError(f"{self.name} has no loss to differentiate: write `loss = ...`")
        return self.loss

    def loss_value(self) -> Value:
        """The differentiated output."""
        return self.outputs[self.loss_name()]

    def leaves(self) -> Iterator[Value]:
        yield from (i.value for i in self.inputs)
        yield from (p.value for p in self.params)
        yield from (s.value for s in self.state)

    def value(self, name: str) -> Value:
        for v in self.leaves():
            if v.name == name:
                return v
        if name in self.outputs:
            return self.outputs[name]
        for n in self.nodes:
            if n.out.name == name:
                return n.out
        raise KeyError(name)


class ShapeError(Exception):
    """An op's shape or dtype rule was violated; the builder adds the source position."""


class OpSpec(Protocol):
    """What the IR knows of an op: its arity, attributes and shape rule. graphc.ops defines each
    op (graphc.ops.registry.OpDef, with its vjp, reference and lowering) and registers it in OPS."""

    name: str
    nargs: int
    defaults: dict[str, Any]
    shape: Callable[[list[TensorType], dict], TensorType]
    dtype_attr: str | None  # the attribute naming the output's float dtype, if any

    def attributes(self) -> tuple[list[str], set[str]]: ...
    def check_attributes(self, attrs: dict[str, Any]) -> None: ...


OPS: dict[str, OpSpec] = {}  # every op by name: filled by graphc.ops, which graphc's package imports


class Builder:
    """Adds nodes to a graph, checking each against its op's shape rule.

    `b.add(x, y)`, `b.matmul(x, w, tb=True)`: any registered op is a method. Plain Python numbers
    become literal constants of the dtype of the op's first tensor operand.
    """

    def __init__(self, graph: Graph, loc: Loc | None = None, scope: str = "",
                 grad_of: tuple[Node, int] | None = None) -> None:
        self.graph = graph
        self.loc = loc
        self.scope = scope
        self.grad_of = grad_of

    def const(self, x: float, dtype: str, shape: tuple[Dim, ...] = ()) -> Value:
        """A literal: every element of the (possibly non-scalar) value equals `x`."""
        return Value(repr(float(x)), TensorType(dtype, tuple(shape)), const=float(x))

    def op(self, name: str, *args: Value | float, name_out: str | None = None, **attrs: Any) -> Value:
        opdef = OPS[name]
        dtype = next((a.dtype for a in args if isinstance(a, Value) and a.type.is_float), "f32")
        inputs = [a if isinstance(a, Value) else self.const(a, dtype) for a in args]
        attrs = {**opdef.defaults, **attrs}
        try:
            opdef.check_attributes(attrs)
            t = opdef.shape([v.type for v in inputs], attrs)
        except ShapeError as e:
            raise GraphcError(f"{name}: {e}", self.loc) from None
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            # every attribute a user can write is checked by the rule (ShapeError): this is its bug
            raise InternalError(f"{name}'s shape rule failed on {attrs}: {e!r}") from e
        t.check_size(self.loc)
        out = Value(name_out or self.graph.fresh(), t)
        node = Node(name, inputs, attrs, out, self.loc, self.scope, self.grad_of)
        out.producer = node
        self.graph.nodes.append(node)
        return out

    def __getattr__(self, name: str) -> Callable[..., Value]:
        if name not in OPS:
            raise AttributeError(name)
        return lambda *args, **attrs: self.op(name, *args, **attrs)
