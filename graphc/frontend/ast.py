"""The syntax tree of a .net file: plain dataclasses, every node positioned by a Loc."""

from __future__ import annotations

from dataclasses import dataclass

from graphc.errors import Loc


# ---- expressions ----

@dataclass
class Num:
    value: int | float  # int when written without '.' or exponent
    loc: Loc


@dataclass
class Name:
    id: str
    loc: Loc


@dataclass
class Str:
    value: str  # without the quotes
    loc: Loc


@dataclass
class Bool:
    value: bool
    loc: Loc


@dataclass
class ListExpr:
    items: list[Expr]
    loc: Loc


@dataclass
class BinOp:
    op: str  # one of + - * / @
    left: Expr
    right: Expr
    loc: Loc  # the operator, so shape errors point at it


@dataclass
class Neg:
    operand: Expr
    loc: Loc


@dataclass
class Kwarg:
    name: str
    value: Expr
    loc: Loc


@dataclass
class Call:
    func: str
    args: list[Expr | Kwarg]  # in source order, so misplaced positional args can be reported
    scope: Name | None        # `as NAME`
    loc: Loc                  # the function name

    @property
    def positional(self) -> list[Expr]:
        return [a for a in self.args if not isinstance(a, Kwarg)]

    @property
    def kwargs(self) -> list[Kwarg]:
        return [a for a in self.args if isinstance(a, Kwarg)]


Expr = Num | Name | Str | Bool | ListExpr | BinOp | Neg | Call


def literal(e: Expr) -> int | float | bool | None:
    """The value of a number or boolean literal (unary minuses included), else None."""
    negs = 0
    while isinstance(e, Neg):  # a loop: 5,000 minuses must not exhaust Python's stack
        e, negs = e.operand, negs + 1
    if isinstance(e, Num):
        return -e.value if negs % 2 else e.value
    return e.value if isinstance(e, Bool) and not negs else None


# ---- types ----

@dataclass
class DimRef:
    value: int | str  # a size, or a dim name
    loc: Loc


@dataclass
class TypeExpr:
    dtype: str
    dims: list[DimRef]
    loc: Loc

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d.value) for d in self.dims)}]"


# ---- statements (loc is the declared name where there is one) ----

@dataclass
class Net:
    name: str
    loc: Loc


@dataclass
class DimDecl:
    name: str
    loc: Loc


@dataclass
class InputDecl:
    name: str
    type: TypeExpr
    nograd: bool
    default: Expr | None
    loc: Loc


@dataclass
class ParamDecl:
    name: str
    type: TypeExpr
    init: Call
    loc: Loc


@dataclass
class Assign:
    name: str
    value: Expr
    loc: Loc


@dataclass
class OutputDecl:
    name: str
    value: Expr | None  # None: declare an existing variable as an output
    metric: bool        # `metric` (not differentiated) rather than `output`
    loc: Loc


@dataclass
class Return:
    value: Expr
    loc: Loc


@dataclass
class LayerParam:
    name: str
    kind: TypeExpr | Name  # a tensor type, or one of int / float / fn
    default: Expr | None
    loc: Loc


@dataclass
class Layer:
    name: str
    params: list[LayerParam]
    ret: TypeExpr | None
    body: list[ParamDecl | Assign | Return]
    loc: Loc


@dataclass
class TrainEntry:
    key: str
    value: Expr
    loc: Loc
    mapping: list[tuple[str, str, Loc]] | None = None  # `{ input = "array", ... }` after the value


@dataclass
class Train:
    entries: list[TrainEntry]
    loc: Loc


Stmt = Net | DimDecl | InputDecl | ParamDecl | Assign | OutputDecl | Layer | Train


@dataclass
class Module:
    stmts: list[Stmt]
    file: str
