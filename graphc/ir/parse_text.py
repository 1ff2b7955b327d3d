"""Reads the text IR (what graphc/ir/printer.py prints) back into a Graph; grammar: grammar/ir.lark.

Every node goes through the Builder again, so its op's shape rule runs and must give the type the
text declares. print_graph(parse_text(print_graph(g))) reproduces the text exactly, and the graph
equals `g` except for what the text leaves out: the column and directory of each node's source
position, and the source positions of leaves.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken,
                             VisitError)

from graphc.errors import GraphcError, Loc
from graphc.ir.graph import DTYPES, OPS, Builder, Graph, Input, Param, TensorType, Value
from graphc.resources import grammar

__all__ = ["parse_text"]


@functools.cache
def _parser() -> Lark:
    return Lark(grammar("ir.lark"), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True)


def parse_text(text: str, file: str = "<ir>") -> Graph:
    """The graph that `text` prints; errors are GraphcErrors at file:line:col of the text."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise GraphcError(_syntax_message(e), Loc(file, e.line, e.column), text) from None
    at = lambda tok: Loc(file, tok.line, tok.column)
    try:
        graphs = _ToData(at).transform(tree).children
        bodies: dict[str, Graph] = {}
        for data in reversed(graphs):  # a body is printed after the graph that runs it
            g = _Reader(at, bodies).graph(*data.children)
            bodies[g.name] = g
        return g
    except VisitError as e:  # a GraphcError raised while reading a rule (e.g. a bad dtype)
        if isinstance(e.orig_exc, GraphcError):
            raise e.orig_exc.with_source(text) from None
        raise
    except GraphcError as e:
        raise e.with_source(text)


def _syntax_message(e: UnexpectedInput) -> str:
    if isinstance(e, UnexpectedToken) and e.token.type == "$END" or isinstance(e, UnexpectedEOF):
        return "unexpected end of the IR text"
    if isinstance(e, UnexpectedToken):
        return f"unexpected '{e.token}' (expected {', '.join(sorted(e.expected))})"
    assert isinstance(e, UnexpectedCharacters)
    return f"unexpected character {e.char!r}"


def _number(tok: Token) -> int | float:
    """Integers stay integers (dims, axes); anything with a point, exponent or inf is a float."""
    s = str(tok)
    return int(s) if s.lstrip("-").isdigit() else float(s)


# ---- parse tree -> plain data (tokens kept where a later error needs the position) ----

@dataclass
class _Ref:
    tok: Token                 # a value's name, or a literal number
    type: TensorType | None    # a literal's type when the text gives it


@dataclass
class _Decl:                   # an output in the signature
    tok: Token
    type: TensorType
    role: str | None           # "loss", "metric" or None


@dataclass
class _NodeLine:
    out: Token
    type: TensorType
    op: Token
    args: list[_Ref]
    attrs: dict[str, Any]
    loc: Loc | None
    scope: str
    grad_of: tuple[Token, int] | None


@dataclass
class _Assign:                 # `name = ref` (an output) or `name <- ref` (an update)
    tok: Token
    ref: _Ref | None           # an output may leave it out: `name` is then its own value
    update: bool


@dataclass
class _BodyRef:                # `body=@NAME`: a graph printed further down
    tok: Token


@dataclass
class _Leaf:
    tok: Token
    entry: Input | Param


@v_args(inline=True)
class _ToData(Transformer):
    def __init__(self, at) -> None:
        super().__init__()
        self.at = at

    def type(self, dtype: Token, *dims: int | str) -> TensorType:
        if dtype not in DTYPES:
            raise GraphcError(f"unknown dtype '{dtype}' (known: {', '.join(DTYPES)})", self.at(dtype))
        return TensorType(str(dtype), dims)

    def dim_number(self, tok: Token) -> int:
        n = _number(tok)
        if not isinstance(n, int) or n < 0:
            raise GraphcError(f"a dim is a size or a name, got {tok}", self.at(tok))
        return n

    def dim_name(self, tok: Token) -> str:
        return str(tok)

    def dims(self, *sizes: tuple[str, int]) -> dict[str, int]:
        return dict(sizes)

    def dim_size(self, name: Token, size: Token) -> tuple[str, int]:
        return str(name), self.dim_number(size)

    def input(self, name: Token, t: TensorType, nograd: Token | None, default: Token | None) -> _Leaf:
        return _Leaf(name, Input(Value(str(name), t), nograd is not None,
                                 None if default is None else float(default)))

    def param(self, name: Token, t: TensorType, init: Token, *args: tuple[str, int | float]) -> _Leaf:
        return _Leaf(name, Param(Value(str(name), t), str(init), dict(args)))

    def init_arg(self, name: Token, value: Token) -> tuple[str, int | float]:
        return str(name), _number(value)

    def leaves(self, *items: _Leaf | Token) -> tuple[list[_Leaf], list[_Leaf], list[_Leaf]]:
        state_at = next((i for i, x in enumerate(items) if isinstance(x, Token)), len(items))
        leaves = [x for x in items[:state_at] if isinstance(x, _Leaf)]
        state = [x for x in items[state_at + 1:] if isinstance(x, _Leaf)]
        return ([x for x in leaves if isinstance(x.entry, Input)],
                [x for x in leaves if isinstance(x.entry, Param)], state)

    def output_decl(self, name: Token, t: TensorType, role: Token | None) -> _Decl:
        return _Decl(name, t, None if role is None else str(role))

    def ref(self, tok: Token, t: TensorType | None = None) -> _Ref:
        return _Ref(tok, t)

    def attrs(self, *pairs: tuple[str, Any]) -> dict[str, Any]:
        return dict(pairs)

    def attr(self, name: Token, value: Any) -> tuple[str, Any]:
        return str(name), value

    def attr_number(self, tok: Token) -> int | float:
        return _number(tok)

    def attr_name(self, tok: Token) -> Any:
        words = {"true": True, "false": False, "None": None, "inf": float("inf"), "nan": float("nan")}
        return words.get(str(tok), str(tok))

    def attr_list(self, *values: Any) -> tuple:
        return values

    def attr_graph(self, name: Token) -> _BodyRef:
        return _BodyRef(name)

    def where(self, file: Token, line: Token) -> Loc:
        return Loc(str(file), int(line), 1)

    def grad_of(self, node: Token, arg: Token | None) -> tuple[Token, int]:
        return node, -1 if arg is None else int(arg[3:])

    def node(self, out: Token, t: TensorType, op: Token, *rest: Any) -> _NodeLine:
        *args, attrs, loc, scope, grad_of = rest
        return _NodeLine(out, t, op, args, attrs or {}, loc, str(scope or ""), grad_of)

    def output(self, name: Token, ref: _Ref | None) -> _Assign:
        return _Assign(name, ref, update=False)

    def update(self, name: Token, ref: _Ref) -> _Assign:
        return _Assign(name, ref, update=True)


# ---- plain data -> Graph ----

class _Reader:
    """Builds the graph statement by statement, resolving names as the text defines them."""

    def __init__(self, at, bodies: dict[str, Graph]) -> None:
        self.at = at
        self.bodies = bodies  # the loop bodies read so far, by name
        self.env: dict[str, Value] = {}
        self.g = Graph("")

    def define(self, tok: Token, v: Value) -> Value:
        if str(tok) in self.env:
            raise GraphcError(f"{tok} is defined twice", self.at(tok))
        self.env[str(tok)] = v
        return v

    def value(self, ref: _Ref, t: TensorType) -> Value:
        """A named value, or a literal typed by the text or else by `t` (its operands' type)."""
        name = str(ref.tok)
        if name in self.env:
            return self.env[name]
        try:
            x = float(name)
        except ValueError:
            raise GraphcError(f"{name} is not defined", self.at(ref.tok)) from None
        t = ref.type or TensorType(t.dtype, ())
        return Builder(self.g).const(x, t.dtype, t.shape)

    def graph(self, name: Token, dims: dict[str, int] | None, leaves,
              *rest: _Decl | _NodeLine | _Assign) -> Graph:
        g = self.g
        g.name, g.dims = str(name), dims or {}
        inputs, params, state = leaves
        g.inputs = [x.entry for x in inputs]
        g.params = [x.entry for x in params]
        g.state = [x.entry for x in state]
        for x in inputs + params + state:
            self.define(x.tok, x.entry.value)
        buffers = {str(x.tok): x.entry.value for x in params + state}  # what an update may write
        decls = {str(d.tok): d for d in rest if isinstance(d, _Decl)}
        outputs: dict[str, Value] = {}
        for s in rest:
            if isinstance(s, _NodeLine):
                self.node(s)
            elif isinstance(s, _Assign) and s.update:
                g.updates.append(self.update(s.tok, s.ref, buffers))
            elif isinstance(s, _Assign):
                outputs[str(s.tok)] = self.output(s.tok, s.ref, decls)
        for k, d in decls.items():
            if k not in outputs:
                raise GraphcError(f"output {k} is declared but never assigned", self.at(d.tok))
        g.outputs = {k: outputs[k] for k in decls}
        g.loss = next((k for k, d in decls.items() if d.role == "loss"), None)
        g.metrics = tuple(k for k, d in decls.items() if d.role == "metric")
        g.continue_numbering()
        return g

    def node(self, s: _NodeLine) -> None:
        if s.op not in OPS:
            raise GraphcError(f"unknown op '{s.op}'", self.at(s.op))
        opdef = OPS[s.op]
        if opdef.nargs and len(s.args) != opdef.nargs:
            raise GraphcError(f"{s.op} takes {opdef.nargs} operand(s), got {len(s.args)}", self.at(s.op))
        names, required = opdef.attributes()
        unknown = [k for k in s.attrs if k not in names]
        if unknown:
            raise GraphcError(f"{s.op} has no attribute '{unknown[0]}'", self.at(s.op))
        missing = sorted(required - set(s.attrs))
        if missing:
            raise GraphcError(f"{s.op} needs the attribute {missing[0]}=...", self.at(s.op))
        named = [self.env[str(r.tok)] for r in s.args if str(r.tok) in self.env]
        operand_type = next((v.type for v in named if v.type.is_float), s.type)
        args = [self.value(r, operand_type) for r in s.args]
        grad_of = None
        if s.grad_of:
            fwd, i = s.grad_of
            producer = self.env[str(fwd)].producer if str(fwd) in self.env else None
            if producer is None:
                raise GraphcError(f"vjp of {fwd}, which is not a node above", self.at(fwd))
            grad_of = (producer, i)
        for k, a in s.attrs.items():
            if isinstance(a, _BodyRef):
                if str(a.tok) not in self.bodies:
                    raise GraphcError(f"no graph {a.tok} follows", self.at(a.tok))
                s.attrs[k] = self.bodies[str(a.tok)]
        b = Builder(self.g, s.loc, s.scope, grad_of)
        try:
            v = b.op(str(s.op), *args, name_out=str(s.out), **s.attrs)
        except GraphcError as e:  # a shape rule failed: point at this line, not the model source
            raise GraphcError(e.message, self.at(s.op)) from None
        if v.type != s.type:
            raise GraphcError(f"{s.out} is declared {s.type} but {s.op} gives {v.type}", self.at(s.out))
        self.define(s.out, v)

    def output(self, name: Token, ref: _Ref | None, decls: dict[str, _Decl]) -> Value:
        if str(name) not in decls:
            raise GraphcError(f"output {name} is not in the graph's signature", self.at(name))
        want = decls[str(name)].type
        v = self.value(ref or _Ref(name, None), want)
        if v.type != want:
            raise GraphcError(f"output {name} is declared {want} but is {v.type}", self.at(name))
        return v

    def update(self, target: Token, ref: _Ref | None, buffers: dict[str, Value]) -> tuple[Value, Value]:
        if str(target) not in buffers or ref is None:
            raise GraphcError(f"update of {target}, which is not a param or state", self.at(target))
        t = buffers[str(target)]
        v = self.value(ref, t.type)
        if v.type != t.type:
            raise GraphcError(f"update of {target} ({t.type}) with a {v.type}", self.at(target))
        return t, v
