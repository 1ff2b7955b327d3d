"""Source text -> AST with the lark grammar; syntax errors become positioned GraphcErrors."""

from __future__ import annotations

import functools
import re
from typing import Iterator, cast

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import (UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken,
                             VisitError)
from lark.lexer import PatternStr

from graphc.errors import GraphcError, InternalError, Loc
from graphc.frontend import ast
from graphc.resources import grammar

_EXPR_START = {"NUMBER", "NAME", "LPAR", "MINUS"}
_EXPR_TOKENS = _EXPR_START | {"STRING", "TRUE", "FALSE", "LSQB"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT"}
_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a quoted string",
          "_NL": "end of line", "$END": "end of file"}


class _BracketNewlines:
    """Post-lexer: drops newlines inside () and [] so long calls and lists can span lines."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(depth - 1, 0)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@functools.cache
def _parser() -> Lark:
    return Lark(grammar("graphc.lark"), parser="lalr", lexer="contextual", propagate_positions=True,
                postlex=_BracketNewlines(), maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse .net source into a Module. Raises GraphcError (with source) on a syntax error."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, file).with_source(text) from None
    try:
        return ast.Module(_ToAst(file).transform(tree), file)
    except VisitError as e:  # a GraphcError raised while building the AST (e.g. a bad dim)
        if isinstance(e.orig_exc, GraphcError):
            raise e.orig_exc.with_source(text) from None
        raise


# ---- syntax errors in words ----

def _describe(name: str, parser: Lark) -> str:
    if name in _WORDS:
        return _WORDS[name]
    term = parser.get_terminal(name)
    return f"'{term.pattern.value}'" if isinstance(term.pattern, PatternStr) else name.lower()


def _expected(names: set[str], parser: Lark) -> str:
    words = []
    if "_NL" in names:  # a statement may end at a newline or at the end of the file: say it once
        names = names - {"$END"}
    if _EXPR_START <= names:
        words.append("an expression")
        names = names - _EXPR_TOKENS
    if _OPERATORS <= names:
        words.append("an operator")
        names = names - _OPERATORS
    words += sorted(_describe(n, parser) for n in names)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _end_loc(text: str, file: str) -> Loc:
    """Just after the last non-blank character: where a missing token would go."""
    body = text.rstrip()
    line = body.count("\n") + 1
    return Loc(file, line, len(body) - (body.rfind("\n") + 1) + 1)


def _token_loc(file: str, tok: Token) -> Loc:
    """Where `tok` starts: the lexer gives every token it makes a line and a column."""
    if tok.line is None or tok.column is None:
        raise InternalError(f"token {tok.type} {str(tok)!r} has no position")
    return Loc(file, tok.line, tok.column)


def _syntax_error(e: UnexpectedInput, text: str, file: str) -> GraphcError:
    parser = _parser()
    if isinstance(e, UnexpectedCharacters):
        # lark types pos_in_stream as None on the base class; the lexer sets it to where it stopped
        ch, loc = text[cast(int, e.pos_in_stream)], Loc(file, e.line, e.column)
        if ch == '"':
            return GraphcError("unterminated string", loc, hint='a string ends with " on its own line')
        return GraphcError(f"unexpected character {ch!r}", loc, hint=_LOOKALIKES.get(ch))
    if isinstance(e, UnexpectedToken) and e.token.type != "$END":
        tok = e.token
        expected = _expected(set(e.accepts or e.expected), parser)
        what = {"NAME": f"name '{tok}'", "NUMBER": f"number {tok}", "STRING": f"string {tok}",
                "_NL": "end of line"}.get(tok.type, f"'{tok}'")
        before = text[:tok.start_pos].rsplit("\n", 1)[-1].split()
        hint = (f"'{before[0]}' is a keyword; give the value another name"
                if tok.type == "EQUAL" and len(before) == 1 and before[0] in _KEYWORDS
                else _unclosed(text, tok.start_pos, tok.line))
        return GraphcError(f"unexpected {what}; expected {expected}", _token_loc(file, tok),
                           hint=hint)
    if isinstance(e, (UnexpectedToken, UnexpectedEOF)):
        expected = _expected(set(e.accepts or e.expected if isinstance(e, UnexpectedToken)
                                 else e.expected), parser)
        return GraphcError(f"unexpected end of file; expected {expected}", _end_loc(text, file),
                           hint=_unclosed(text, len(text), None))
    return GraphcError("syntax error", Loc(file, e.line, e.column))


_KEYWORDS = {"net", "dim", "input", "param", "layer", "output", "metric", "train"}
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_LOOKALIKES = {";": "statements end at the end of a line", "×": "multiply with *",
               "·": "multiply with *", "÷": "divide with /", "−": "subtract with -",
               "→": "a layer's return type follows ->", "“": 'strings are quoted with "',
               "”": 'strings are quoted with "'}


def _unclosed(text: str, end: int, line: int | None) -> str | None:
    """A hint naming the innermost bracket still open at `end`, if it opened before `line` (the
    error's line; None: anywhere): where a forgotten ) or } was meant to go."""
    stack: list[tuple[str, int, int]] = []
    for n, row in enumerate(text[:end].split("\n"), 1):
        for col, ch in enumerate(re.sub(r'"[^"\n]*"|#.*', lambda m: " " * len(m[0]), row), 1):
            if ch in _CLOSERS:
                stack.append((ch, n, col))
            elif stack and ch == _CLOSERS[stack[-1][0]]:
                stack.pop()
    if stack and (line is None or stack[-1][1] < line):
        ch, n, col = stack[-1]
        return f"the '{ch}' at line {n}, column {col} is never closed"
    return None


# ---- lark tree -> AST ----

# in _ToAst's body, `list` is its method for the grammar's list rule, not the builtin
_DimDecls = list[ast.DimDecl]
_DataMap = list[tuple[str, str, Loc]]
_Stmts = list[ast.Stmt]

@v_args(inline=True)
class _ToAst(Transformer_NonRecursive):  # no recursion: a 200,000-term sum is a deep tree
    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _loc(self, tok: Token) -> Loc:
        return _token_loc(self.file, tok)

    def _at(self, x: Token | ast.Expr) -> Loc:
        return self._loc(x) if isinstance(x, Token) else x.loc

    # expressions
    def number(self, tok: Token) -> ast.Num:
        text = str(tok)
        value = int(text) if text.isdigit() else float(text)
        return ast.Num(value, self._loc(tok))

    def name(self, tok: Token) -> ast.Name:
        return ast.Name(str(tok), self._loc(tok))

    def string(self, tok: Token) -> ast.Str:
        return ast.Str(str(tok)[1:-1], self._loc(tok))

    def true(self, tok: Token) -> ast.Bool:
        return ast.Bool(True, self._loc(tok))

    def false(self, tok: Token) -> ast.Bool:
        return ast.Bool(False, self._loc(tok))

    def list(self, lsqb: Token, *items: ast.Expr | None) -> ast.ListExpr:
        return ast.ListExpr([i for i in items if i is not None], self._loc(lsqb))

    def binop(self, left: ast.Expr, op: Token, right: ast.Expr) -> ast.BinOp:
        return ast.BinOp(str(op), left, right, self._loc(op))

    def neg(self, minus: Token, operand: ast.Expr) -> ast.Neg:
        return ast.Neg(operand, self._loc(minus))

    def kwarg(self, name: Token, value: ast.Expr) -> ast.Kwarg:
        return ast.Kwarg(str(name), value, self._loc(name))

    def call(self, func: Token, *rest) -> ast.Call:
        *args, scope = rest
        scope_name = ast.Name(str(scope), self._loc(scope)) if scope is not None else None
        return ast.Call(str(func), [a for a in args if a is not None], scope_name, self._loc(func))

    # types
    def dim_name(self, tok: Token) -> ast.DimRef:
        return ast.DimRef(str(tok), self._loc(tok))

    def dim_number(self, tok: Token) -> ast.DimRef:
        text = str(tok)
        if not text.isdigit():
            raise GraphcError(f"a dim must be a whole number or a name, got {text}",
                              self._loc(tok))
        return ast.DimRef(int(text), self._loc(tok))

    def type(self, dtype: Token, *dims: ast.DimRef | None) -> ast.TypeExpr:
        return ast.TypeExpr(str(dtype), [d for d in dims if d is not None], self._loc(dtype))

    # statements
    def net(self, name: Token) -> ast.Net:
        return ast.Net(str(name), self._loc(name))

    def dim_decl(self, *names: Token) -> _DimDecls:
        return [ast.DimDecl(str(n), self._loc(n)) for n in names]

    def input_decl(self, name: Token, type_: ast.TypeExpr, nograd: Token | None,
                   default: ast.Expr | None) -> ast.InputDecl:
        return ast.InputDecl(str(name), type_, nograd is not None, default, self._loc(name))

    def param_decl(self, name: Token, type_: ast.TypeExpr, init: ast.Call) -> ast.ParamDecl:
        return ast.ParamDecl(str(name), type_, init, self._loc(name))

    def assign(self, name: Token, value: ast.Expr) -> ast.Assign:
        return ast.Assign(str(name), value, self._loc(name))

    def output_decl(self, name: Token, value: ast.Expr | None) -> ast.OutputDecl:
        return ast.OutputDecl(str(name), value, False, self._loc(name))

    def metric_decl(self, name: Token, value: ast.Expr | None) -> ast.OutputDecl:
        return ast.OutputDecl(str(name), value, True, self._loc(name))

    def return_stmt(self, kw: Token, value: ast.Expr) -> ast.Return:
        return ast.Return(value, self._loc(kw))

    def layer_param(self, name: Token, kind: ast.TypeExpr | Token,
                    default: ast.Expr | None) -> ast.LayerParam:
        typ = ast.Name(str(kind), self._loc(kind)) if isinstance(kind, Token) else kind
        return ast.LayerParam(str(name), typ, default, self._loc(name))

    def layer_def(self, name: Token, *rest) -> ast.Layer:
        params = [p for p in rest if isinstance(p, ast.LayerParam)]
        tail = rest[len(params):]
        # with no parameters, the `[params]` placeholder leaves a None before the return type
        if tail and tail[0] is None and not params:
            tail = tail[1:]
        ret, body = tail[0], [s for s in tail[1:] if s is not None]
        return ast.Layer(str(name), params, ret, body, self._loc(name))

    def train_entry(self, key: Token, value: ast.Expr,
                    mapping: _DataMap | None) -> ast.TrainEntry:
        return ast.TrainEntry(str(key), value, self._loc(key), mapping)

    def data_map(self, *entries: tuple[str, str, Loc]) -> _DataMap:
        return list(entries)

    def map_entry(self, name: Token, array: Token) -> tuple[str, str, Loc]:
        return str(name), str(array)[1:-1], self._loc(name)

    def train_block(self, kw: Token, *entries: ast.TrainEntry) -> ast.Train:
        return ast.Train(list(entries), self._loc(kw))

    def start(self, *stmts: ast.Stmt | _DimDecls) -> _Stmts:
        return [s for group in stmts for s in (group if isinstance(group, list) else [group])]
