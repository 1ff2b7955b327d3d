"""AST -> forward Graph: resolves names, inlines layers (unifying their dims) and checks everything.

Expressions are built with the IR Builder, its loc set to each operator or call first, so shape
errors from the op registry point at the user's `@` or call. Layers are inlined at each call; a
layer instance's params are named `scope.param` and its nodes carry the scope.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from graphc.autodiff.lr_schedule import INPUTS as SCHEDULE_INPUTS
from graphc.errors import GraphcError, InternalError, Loc
from graphc.frontend import ast
from graphc.frontend.builtins import BUILTINS, Builtin, Instance
from graphc.frontend.config import did_you_mean
from graphc.ir.graph import DTYPES, LR, Builder, Dim, Graph, Input, Param, TensorType, Value
from graphc.ops import REGISTRY, OpDef
from graphc.ir.init import INITIALIZERS, check_arguments

BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}
KINDS = ("int", "float", "fn")  # layer parameters that are not tensors
RESERVED = {LR: "the learning rate input the training step adds", **SCHEDULE_INPUTS}

Number = int | float
# Nested calls, lists and layer calls are evaluated by recursion, a few Python frames a level
# (Python's stack holds about 1000); chains of operators (a + b + c ..., - - x) are walked by a loop.
MAX_DEPTH = 100
# Layers are inlined at each call, so a file of a few lines can ask for 2**30 nodes.
MAX_NODES = 100_000
Const = int | float | bool | str | tuple  # a compile-time attribute value
# tensor constructors: `zeros([B, 16])`, `ones([4])`, `full([B, 16], 0.5)`, each with `dtype=` (f32)
CONSTRUCTORS: dict[str, float | None] = {"zeros": 0.0, "ones": 1.0, "full": None}


@dataclass
class _Frame:
    """The names visible at one level: the top level, or one layer instance."""

    scope: str                                                   # "" or "fc1", "fc1.inner"
    dims: dict[str, Dim]                                         # dim name -> size or symbol
    values: dict[str, Value | Number] = field(default_factory=dict)
    fns: dict[str, str] = field(default_factory=dict)            # fn args -> op, layer or "id"
    defined: dict[str, Loc] = field(default_factory=dict)


def lower(module: ast.Module, training: bool = True) -> Graph:
    """Build the forward graph of a parsed module (its train block is read by config), in the form
    for training or for evaluation: they differ where built-in layers (dropout, batch_norm) do."""
    return _Lowerer(module, training).run()


SCALING = "pixels"  # `input x : f32[B, 784] = pixels(255)`: the data is divided by 255


def _scaling(call: ast.Call, t: TensorType) -> float:
    """The divisor of `pixels(MAX)`, checked: one positive number, on a float input."""
    args = call.positional
    v = ast.literal(args[0]) if len(call.args) == 1 and args else None
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 or call.scope is not None:
        raise GraphcError(f"{SCALING} takes one positive number, the data's maximum: "
                          f"{SCALING}(255) divides the data by 255", call.loc)
    if not t.is_float:
        raise GraphcError(f"only float inputs are scaled; this one is {t} (labels and tokens "
                          "are fed as they are)", call.loc)
    return float(v)


def _not_reserved(name: str, loc: Loc) -> None:
    """Graph leaves share one namespace with what later stages add (the `lr` input)."""
    if name in RESERVED:
        raise GraphcError(f"'{name}' is reserved: {RESERVED[name]}", loc)


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


class _Lowerer:
    def __init__(self, module: ast.Module, training: bool) -> None:
        self.module = module
        self.training = training
        self.file = module.file
        nets = [s for s in module.stmts if isinstance(s, ast.Net)]
        if len(nets) > 1:
            raise GraphcError(f"a second net name (the first is at line {nets[0].loc.line})", nets[1].loc)
        stem = Path(self.file).stem
        self.graph = Graph(nets[0].name if nets else stem if stem.isidentifier() else "net")
        self.b = Builder(self.graph)
        self.layers: dict[str, ast.Layer] = {}
        self.active: list[str] = []  # layers being inlined, outermost first (recursion check)
        self.depth = 0  # expressions being evaluated, outermost first
        self.scopes: set[str] = set()
        self.top = _Frame("", {})
        self.loss: Value | None = None
        self.outputs: dict[str, Value] = {}
        self.metrics: dict[str, Value] = {}

    # ---- top level ----

    def run(self) -> Graph:
        for s in self.module.stmts:
            if isinstance(s, ast.Layer):
                self._check_layer(s)
        for s in self.module.stmts:
            self._stmt(s)
        g = self.graph
        g.outputs = ({"loss": self.loss} if self.loss else {}) | self.outputs | self.metrics
        g.loss = "loss" if self.loss else next(iter(self.outputs), None)
        g.metrics = tuple(self.metrics)
        if g.loss is None:
            raise GraphcError("no loss or output defined", Loc(self.file, 1, 1),
                              hint="assign `loss = ...` or declare `output NAME = ...`")
        return g

    def _stmt(self, s: ast.Stmt) -> None:
        """One top-level statement (net, layer and train statements are read elsewhere)."""
        fr = self.top
        if isinstance(s, ast.DimDecl):
            if s.name in fr.dims:
                raise GraphcError(f"dim {s.name} is already declared", s.loc)
            fr.dims[s.name] = s.name  # stays symbolic until bound at compile time
        elif isinstance(s, ast.InputDecl):
            self._input(s)
        elif isinstance(s, ast.ParamDecl):
            self._param(s, fr)
        elif isinstance(s, ast.Assign):
            v = self._tensor(s.value, fr)
            self._define(fr, s.name, v, s.loc)
            if s.name == "loss":
                self._set_loss(v, s.loc)
        elif isinstance(s, ast.OutputDecl):
            self._output(s)

    def _input(self, s: ast.InputDecl) -> None:
        _not_reserved(s.name, s.loc)
        t = self._type(s.type, self.top)
        default = scale = None
        if isinstance(s.default, ast.Call) and s.default.func == SCALING:
            scale = _scaling(s.default, t)
        elif s.default is not None:
            default = ast.literal(s.default)
            if not isinstance(default, (int, float)) or isinstance(default, bool):
                raise GraphcError(f"an input's default must be a number (or {SCALING}(MAX), "
                                  "how its data is scaled)", s.default.loc)
            if t.rank:
                raise GraphcError(f"only scalar inputs take a default value; {s.name} is {t}",
                                  s.default.loc, hint=f"to scale its data, write = {SCALING}(255)")
        v = Value(s.name, t)
        self._define(self.top, s.name, v, s.loc)
        # integer inputs (labels) have no gradient
        self.graph.inputs.append(Input(v, s.nograd or not t.is_float,
                                       None if default is None else float(default), s.loc, scale))

    def _set_loss(self, v: Value | Number, loc: Loc) -> None:
        if not isinstance(v, Value) or not v.type.is_float or v.type.rank:
            got = v.type if isinstance(v, Value) else "a number"
            raise GraphcError(f"loss must be a float scalar, got {got}", loc,
                              hint="reduce it, e.g. loss = mean(...)")
        self.loss = v

    def _output(self, s: ast.OutputDecl) -> None:
        if s.value is not None:
            v = self._tensor(s.value, self.top)
            self._define(self.top, s.name, v, s.loc)
            if s.name == "loss":
                self._set_loss(v, s.loc)
                return
        else:
            v = self._lookup(ast.Name(s.name, s.loc), self.top)
        if s.name in self.outputs or s.name in self.metrics or (s.name == "loss" and self.loss):
            raise GraphcError(f"'{s.name}' is already an output", s.loc)
        if not isinstance(v, Value):
            raise GraphcError(f"output {s.name} must be a tensor, got the number {v}", s.loc)
        (self.metrics if s.metric else self.outputs)[s.name] = v

    # ---- declarations shared by the top level and layers ----

    def _define(self, fr: _Frame, name: str, v: Value | Number, loc: Loc) -> None:
        if name in fr.defined:
            raise GraphcError(f"'{name}' is already defined (line {fr.defined[name].line})", loc)
        fr.values[name] = v
        fr.defined[name] = loc

    def _dtype(self, t: ast.TypeExpr) -> None:
        if t.dtype not in DTYPES:
            raise GraphcError(f"unknown dtype '{t.dtype}'", t.loc,
                              hint=did_you_mean(t.dtype, DTYPES) or f"dtypes: {', '.join(DTYPES)}")

    def _type(self, t: ast.TypeExpr, fr: _Frame) -> TensorType:
        self._dtype(t)
        shape: list[Dim] = []
        for d in t.dims:
            if isinstance(d.value, int):
                if d.value <= 0:
                    raise GraphcError(f"a dim must be positive, got {d.value}", d.loc)
                shape.append(d.value)
            elif d.value in fr.dims:
                size = fr.dims[d.value]
                if isinstance(size, int) and size <= 0:  # a layer's int argument used as a dim
                    raise GraphcError(f"dim {d.value} is {size} here; a dim must be positive", d.loc)
                shape.append(size)
            else:
                hint = (f"declare it with `dim {d.value}`" if fr is self.top else
                        "a layer's dims come from its tensor parameters' types and its int arguments")
                raise GraphcError(f"undefined dim '{d.value}'", d.loc,
                                  hint=did_you_mean(d.value, list(fr.dims)) or hint)
        return TensorType(t.dtype, tuple(shape)).check_size(t.loc)

    def _param(self, s: ast.ParamDecl, fr: _Frame) -> None:
        t = self._type(s.type, fr)
        if not t.is_float:
            raise GraphcError(f"param {s.name} must be a float tensor (f32 or f64), got {t}", s.type.loc)
        init = s.init
        if init.func not in INITIALIZERS:
            raise GraphcError(f"unknown initializer '{init.func}'", init.loc,
                              hint=did_you_mean(init.func, list(INITIALIZERS))
                              or f"initializers: {', '.join(INITIALIZERS)}")
        if init.positional or init.scope:
            raise GraphcError(f"{init.func}() takes keyword arguments only, e.g. normal(std=0.01)",
                              init.loc)
        allowed = list(inspect.signature(INITIALIZERS[init.func]).parameters)[1:]  # after shape
        args: dict[str, float] = {}
        for kw in init.kwargs:
            if kw.name not in allowed or kw.name in args:
                why = "twice" if kw.name in args else "unknown"
                raise GraphcError(f"{init.func}() argument '{kw.name}' is {why}", kw.loc,
                                  hint=f"{init.func}() takes " + (", ".join(allowed) or "no arguments"))
            v = self._const(kw.value, fr)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise GraphcError(f"{init.func}({kw.name}=...) must be a number", kw.value.loc)
            args[kw.name] = float(v)
        bound = all(isinstance(d, int) for d in t.shape)  # else checked on a stand-in shape
        problem = check_arguments(init.func, args, t.dims if bound else (1, 1))
        if problem:
            raise GraphcError(f"{init.func}(): {problem}", init.loc)
        if fr is self.top:
            _not_reserved(s.name, s.loc)
        value = Value(_join(fr.scope, s.name), t)
        self._define(fr, s.name, value, s.loc)
        self.graph.params.append(Param(value, init.func, args, s.loc))

    # ---- expressions ----

    def _lookup(self, e: ast.Name, fr: _Frame) -> Value | Number:
        if e.id in fr.values:
            return fr.values[e.id]
        size = fr.dims.get(e.id)
        if isinstance(size, int):  # a dim bound to a size is a number (x / D)
            return size
        if e.id in fr.dims:
            raise GraphcError(f"'{e.id}' is a symbolic dim; its size is not known until compile time",
                              e.loc)
        if self._function(e.id, fr):
            raise GraphcError(f"'{e.id}' is a function; call it as {e.id}(...)", e.loc)
        raise GraphcError(f"unknown name '{e.id}'", e.loc, hint=did_you_mean(e.id, list(fr.values)))

    def _function(self, name: str, fr: _Frame) -> str | None:
        """What a called name means: a layer, a built-in layer, an op, or "id" (through fn
        arguments); None if unknown."""
        target = fr.fns.get(name, name)
        known = (target == "id" or target in self.layers or target in BUILTINS or target in REGISTRY
                 or target in CONSTRUCTORS)
        return target if known else None

    @contextmanager
    def _nested(self, loc: Loc) -> Iterator[None]:
        """Around each evaluation of an expression: limits its depth and the graph's size."""
        within = (f"within {len(self.active)} nested layer calls ({self.active[0]} -> ... -> "
                  f"{self.active[-1]})" if self.active else None)
        if self.depth == MAX_DEPTH:
            raise GraphcError(f"nested too deeply: more than {MAX_DEPTH} levels of calls, lists and "
                              "layer calls", loc, hint=within)
        if len(self.graph.nodes) > MAX_NODES:
            raise GraphcError(f"the graph has more than {MAX_NODES:,} nodes", loc, hint=within and (
                f"{within}: layers are inlined at each call, so one that calls another twice "
                "doubles in size"))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def _tensor(self, e: ast.Expr, fr: _Frame) -> Value | Number:
        """Evaluate a tensor expression; numbers stay Python numbers until they meet a tensor."""
        with self._nested(e.loc):
            if isinstance(e, ast.Num):
                return e.value
            if isinstance(e, ast.Name):
                return self._lookup(e, fr)
            if isinstance(e, ast.Call):
                return self._call(e, fr)
            if isinstance(e, (ast.Neg, ast.BinOp)):
                first, chain = _chain(e)
                x = self._tensor(first, fr)
                for op in chain:
                    if isinstance(op, ast.Neg):
                        x = -x if not isinstance(x, Value) else self._apply("neg", [x], {}, op.loc, fr)
                        continue
                    b = self._tensor(op.right, fr)
                    x = (self._apply(BINOPS[op.op], [x, b], {}, op.loc, fr)
                         if isinstance(x, Value) or isinstance(b, Value) else self._fold(op, x, b))
                return x
            what = {ast.Str: "a string", ast.Bool: "true/false", ast.ListExpr: "a list"}[type(e)]
            raise GraphcError(f"{what} is not a tensor; it can only be an attribute value", e.loc)

    def _fold(self, e: ast.BinOp, a: Number, b: Number) -> Number:
        """Arithmetic on plain numbers happens now, not in the graph."""
        if e.op == "@":
            raise GraphcError("@ needs tensor operands, got numbers", e.loc)
        if e.op == "/":
            if b == 0:
                raise GraphcError("division by zero", e.loc)
            return a / b
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b

    def _apply(self, op: str, args: list[Value | Number], attrs: dict[str, Const], loc: Loc,
               fr: _Frame) -> Value:
        self.b.loc, self.b.scope = loc, fr.scope
        return self.b.op(op, *args, name_out=None, **attrs)

    def _const(self, e: ast.Expr, fr: _Frame) -> Const:
        """A compile-time value: numbers, true/false, lists, dims, int/float arguments, dtypes."""
        with self._nested(e.loc):
            v = ast.literal(e)
            if v is not None:
                return v
            if isinstance(e, ast.Str):
                return e.value
            if isinstance(e, ast.ListExpr):
                return tuple(self._const(i, fr) for i in e.items)
            if isinstance(e, ast.Name):
                if e.id in fr.dims:
                    return fr.dims[e.id]
                number = fr.values.get(e.id)
                if isinstance(number, (int, float)):
                    return number
                if e.id in DTYPES:
                    return e.id
                if e.id in fr.values:
                    raise GraphcError(f"'{e.id}' is a tensor; attribute values must be constants", e.loc)
                known = list(fr.dims) + [k for k, x in fr.values.items() if not isinstance(x, Value)]
                raise GraphcError(f"unknown name '{e.id}'", e.loc, hint=did_you_mean(e.id, known))
            if isinstance(e, (ast.Neg, ast.BinOp)):
                first, chain = _chain(e)
                x = self._const(first, fr)
                for op in chain:
                    parts = [x] if isinstance(op, ast.Neg) else [x, self._const(op.right, fr)]
                    nums = [p for p in parts if isinstance(p, (int, float)) and not isinstance(p, bool)]
                    if len(nums) != len(parts):
                        raise GraphcError("arithmetic on constants needs numbers (dims must be known)", op.loc)
                    if isinstance(op, ast.Neg):
                        x = -nums[0]
                        continue
                    r = self._fold(op, *nums)
                    x = int(r) if isinstance(r, float) and r.is_integer() and op.op == "/" else r
                return x
            raise GraphcError("attribute values must be constants (numbers, true/false, lists, dims)", e.loc)

    # ---- calls ----

    def _call(self, c: ast.Call, fr: _Frame) -> Value | Number:
        seen_kw = False
        for a in c.args:
            if isinstance(a, ast.Kwarg):
                seen_kw = True
            elif seen_kw:
                raise GraphcError("a positional argument after keyword arguments", a.loc)
        names = [k.name for k in c.kwargs]
        for i, k in enumerate(c.kwargs):
            if k.name in names[:i]:
                raise GraphcError(f"argument '{k.name}' is given twice", k.loc)
        target = self._function(c.func, fr)
        if target is None:
            if c.func in fr.values:
                raise GraphcError(f"'{c.func}' is a value, not a function", c.loc)
            known = [*fr.fns, *self.layers, *BUILTINS, *REGISTRY, *CONSTRUCTORS, "id"]
            raise GraphcError(f"unknown function '{c.func}'", c.loc, hint=did_you_mean(c.func, known))
        if target in self.layers:
            return self._inline(self.layers[target], c, fr)
        if target in BUILTINS:
            return self._builtin(BUILTINS[target], c, fr)
        if target == "scan":
            return self._scan(c, fr)
        if c.scope is not None:
            raise GraphcError(f"`as` names a layer instance, but {c.func} is not a layer", c.scope.loc)
        if target in CONSTRUCTORS:
            return self._constructor(target, c, fr)
        if target == "id":
            if len(c.args) != 1 or c.kwargs:
                raise GraphcError(f"{c.func} (id) takes one argument, got {len(c.args)}", c.loc)
            return self._tensor(c.positional[0], fr)
        return self._op_call(REGISTRY[target], c, fr)

    def _op_call(self, op: OpDef, c: ast.Call, fr: _Frame) -> Value:
        if len(c.positional) != op.nargs:
            s = "" if op.nargs == 1 else "s"
            raise GraphcError(f"{op.name} takes {op.nargs} tensor argument{s}, got {len(c.positional)}",
                              c.loc, hint=f"{op.name}: {op.doc}" if op.doc else None)
        names, required = op.attributes()
        for k in c.kwargs:
            if k.name not in names:
                hint = did_you_mean(k.name, names) or (
                    f"{op.name} attributes: {', '.join(names)}" if names else f"{op.name} has no attributes")
                raise GraphcError(f"{op.name} has no attribute '{k.name}'", k.loc, hint=hint)
        missing = sorted(required - {k.name for k in c.kwargs})
        if missing:
            raise GraphcError(f"{op.name} needs the attribute {missing[0]}=...", c.loc,
                              hint=f"{op.name}: {op.doc}" if op.doc else None)
        args = [self._tensor(a, fr) for a in c.positional]
        attrs = {k.name: self._const(k.value, fr) for k in c.kwargs}
        return self._apply(op.name, args, attrs, c.loc, fr)

    # ---- layers ----

    def _check_layer(self, layer: ast.Layer) -> None:
        """What can be checked before any call: names, parameter kinds, dtypes, the return."""
        if layer.name in self.layers or layer.name in BUILTINS or layer.name in REGISTRY \
                or layer.name == "id":
            where = (f"line {self.layers[layer.name].loc.line}" if layer.name in self.layers
                     else "a built-in")
            raise GraphcError(f"'{layer.name}' is already defined ({where})", layer.loc)
        seen: set[str] = set()
        for p in layer.params:
            if p.name in seen:
                raise GraphcError(f"parameter '{p.name}' is given twice", p.loc)
            seen.add(p.name)
            if isinstance(p.kind, ast.TypeExpr):
                self._dtype(p.kind)
                if p.default is not None:
                    raise GraphcError(f"tensor parameter {p.name} cannot have a default", p.default.loc)
            elif p.kind.id not in KINDS:
                raise GraphcError(f"unknown parameter kind '{p.kind.id}'", p.kind.loc,
                                  hint=f"use a tensor type such as f32[N, D], or one of {', '.join(KINDS)}")
        if layer.ret is not None:
            self._dtype(layer.ret)
        returns = [i for i, s in enumerate(layer.body) if isinstance(s, ast.Return)]
        if not returns:
            raise GraphcError(f"layer {layer.name} has no return statement", layer.loc)
        if returns[0] != len(layer.body) - 1:
            raise GraphcError("a statement after return", layer.body[returns[0] + 1].loc)
        self.layers[layer.name] = layer

    def _inline(self, layer: ast.Layer, c: ast.Call, caller: _Frame) -> Value:
        if layer.name in self.active:
            chain = self.active[self.active.index(layer.name):] + [layer.name]
            raise GraphcError(f"recursive layer call: {' -> '.join(chain)}", c.loc,
                              hint="layers are inlined at each call, so they cannot call themselves")
        fr = _Frame("", {})
        bound = self._bind_args(layer, c, caller, fr)
        # named after its arguments are built, so nested calls in arguments are numbered first
        fr.scope = self._instance_scope(layer.name, c, caller)
        fr.dims = {**self.top.dims, **bound}
        self.active.append(layer.name)
        *stmts, ret = layer.body
        body = [s for s in stmts if not isinstance(s, ast.Return)]
        if len(body) != len(stmts) or not isinstance(ret, ast.Return):  # _check_layer checked both
            raise InternalError(f"layer {layer.name}'s body does not end in its only return")
        try:
            for s in body:
                if isinstance(s, ast.ParamDecl):
                    self._param(s, fr)
                else:
                    self._define(fr, s.name, self._tensor(s.value, fr), s.loc)
            out = self._tensor(ret.value, fr)
        except GraphcError as err:  # an error inside the body: say which call it came from
            err.hint = err.hint or f"in {layer.name} instance '{fr.scope}', called at line {c.loc.line}"
            raise
        self.active.pop()
        if not isinstance(out, Value):
            raise GraphcError(f"layer {layer.name} must return a tensor, got the number {out}", ret.value.loc)
        if layer.ret is not None:
            want = self._type(layer.ret, fr)
            if out.type != want:
                raise GraphcError(f"layer {layer.name} returns {out.type} but declares -> {layer.ret}"
                                  f" (here {want})", ret.value.loc)
        return out

    def _instance_scope(self, layer: str, c: ast.Call, caller: _Frame) -> str:
        if c.scope is not None:
            scope = _join(caller.scope, c.scope.id)
            if scope in self.scopes:
                raise GraphcError(f"layer instance name '{scope}' is already used", c.scope.loc)
        else:
            n = 0
            while _join(caller.scope, f"{layer}{n}") in self.scopes:
                n += 1
            scope = _join(caller.scope, f"{layer}{n}")
        self.scopes.add(scope)
        return scope

    def _builtin(self, layer: Builtin, c: ast.Call, caller: _Frame) -> Value:
        """A built-in layer: a tensor, then its number arguments (by position or keyword)."""
        hint = f"{layer.name}(x, {', '.join(f'{k}={v:g}' for k, v in layer.args.items())})"
        if not c.positional or len(c.positional) > 1 + len(layer.args):
            raise GraphcError(f"{layer.name} takes a tensor and up to {len(layer.args)} numbers, got "
                              f"{len(c.positional)} arguments", c.loc, hint=hint)
        given = dict(zip(layer.args, c.positional[1:]))
        for k in c.kwargs:
            if k.name not in layer.args or k.name in given:
                why = "is given twice" if k.name in given else "is unknown"
                raise GraphcError(f"{layer.name} argument '{k.name}' {why}", k.loc,
                                  hint=did_you_mean(k.name, list(layer.args)) or hint)
            given[k.name] = k.value
        args = dict(layer.args)
        for name, e in given.items():
            v = self._const(e, caller)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise GraphcError(f"{layer.name}: {name} must be a number, got {v!r}", e.loc)
            args[name] = float(v)
        x = self._tensor(c.positional[0], caller)
        if not isinstance(x, Value):
            raise GraphcError(f"{layer.name} takes a tensor, got the number {x}", c.positional[0].loc)
        scope = self._instance_scope(layer.name, c, caller)
        return layer.emit(Instance(Builder(self.graph, c.loc, scope), self.training), x, **args)

    def _constructor(self, name: str, c: ast.Call, fr: _Frame) -> Value:
        """`zeros(SHAPE)`, `ones(SHAPE)`, `full(SHAPE, VALUE)`, with `dtype=` (f32): a constant
        tensor, every element the value (codegen writes it inline, or fills a buffer where an op
        reads memory)."""
        fill = CONSTRUCTORS[name]
        usage = f"{name}([B, 16]{', 0.5' if fill is None else ''}, dtype=f32)"
        args = [self._const(a, fr) for a in c.positional]
        kwargs = {k.name: self._const(k.value, fr) for k in c.kwargs}
        value = args[1] if fill is None and len(args) == 2 else fill
        want = 1 if fill is not None else 2
        shape = args[0] if args else None
        if len(args) != want or set(kwargs) - {"dtype"} or not isinstance(shape, tuple) or \
                not isinstance(value, (int, float)) or isinstance(value, bool):
            raise GraphcError(f"{name} takes a shape{' and a number' if fill is None else ''}", c.loc,
                              hint=usage)
        dtype = kwargs.get("dtype", "f32")
        if dtype not in DTYPES:
            raise GraphcError(f"{name}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", c.loc)
        for d in shape:
            if not (isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d > 0)):
                raise GraphcError(f"{name}: a dim is a positive whole number or a dim name, got {d!r}",
                                  c.loc, hint=usage)
        if dtype == "i32" and not float(value).is_integer():
            raise GraphcError(f"{name}: an i32 tensor holds whole numbers, got {value}", c.loc)
        TensorType(str(dtype), shape).check_size(c.loc)
        return self.b.const(float(value), str(dtype), shape)

    def _scan(self, c: ast.Call, fr: _Frame) -> Value:
        """`scan(cell, xs, init, ARG=..., ...) [as NAME]`: the cell, a layer taking (x, carry) and
        returning the new carry, run at each step of xs (along axis 0) from carry init; the carries
        after every step, stacked [T, ...]. The cell is lowered once, into the loop's body: its params
        (NAME.W, ...) are the model's, shared by every step; ARGs are its other arguments."""
        usage = "scan(cell, xs, init): cell is a layer cell(x, carry) -> new carry"
        if len(c.positional) != 3:
            raise GraphcError(f"scan takes a cell layer, a sequence and an initial carry, got "
                              f"{len(c.positional)} arguments", c.loc, hint=usage)
        cell_e, xs_e, init_e = c.positional
        layer = self.layers.get(fr.fns.get(cell_e.id, cell_e.id)) if isinstance(cell_e, ast.Name) else None
        if layer is None:
            raise GraphcError("scan's cell must be a layer of this file", cell_e.loc, hint=usage)
        xs, init = self._tensor(xs_e, fr), self._tensor(init_e, fr)
        for e, v in ((xs_e, xs), (init_e, init)):
            if not isinstance(v, Value) or (v is xs and not v.type.rank):
                raise GraphcError("scan's sequence and carry must be tensors, the sequence with a step "
                                  "axis (axis 0)", e.loc, hint=usage)
        assert isinstance(xs, Value) and isinstance(init, Value)
        body = Graph(f"{_join(fr.scope, c.scope.id if c.scope else 'scan')}.cell")
        x = Value("x", TensorType(xs.dtype, xs.shape[1:]))
        carry = Value("carry", init.type)
        body.inputs = [Input(carry), Input(x)]
        caller = _Frame(fr.scope, fr.dims, {**fr.values, "@x": x, "@carry": carry}, dict(fr.fns))
        call = ast.Call(layer.name, [ast.Name("@x", xs_e.loc), ast.Name("@carry", init_e.loc), *c.kwargs],
                        c.scope, c.loc)
        outer, self.graph, self.b = (self.graph, self.b), body, Builder(body)
        try:
            new = self._inline(layer, call, caller)
        finally:
            self.graph, self.b = outer
        if body.state or body.updates:
            raise GraphcError("a scan's cell cannot keep state (batch_norm's statistics, dropout's "
                              "step counter)", c.loc)
        if new.type != carry.type:
            raise GraphcError(f"scan's cell must return its carry's type {carry.type}, got {new.type}",
                              c.loc, hint=usage)
        weights = [Value(p.value.name, p.value.type) for p in body.params]
        self.graph.params += [Param(w, p.init, p.init_args, p.loc) for w, p in zip(weights, body.params)]
        body.inputs += [Input(p.value) for p in body.params]
        body.params = []
        body.outputs = {"carry": new, "y": new}
        self.b.loc, self.b.scope = c.loc, fr.scope
        return self.b.op("scan", init, xs, *weights, body=body, carries=1, xs=1, result=1)

    def _bind_args(self, layer: ast.Layer, c: ast.Call, caller: _Frame, fr: _Frame) -> dict[str, Dim]:
        """Match call arguments to the layer's parameters; returns the dims they bind."""
        params = {p.name: p for p in layer.params}
        if len(c.positional) > len(layer.params):
            raise GraphcError(f"{layer.name} takes {len(layer.params)} arguments, got {len(c.positional)}",
                              c.loc, hint=_signature(layer))
        given: dict[str, ast.Expr] = {p.name: a for p, a in zip(layer.params, c.positional)}
        for k in c.kwargs:
            if k.name not in params:
                raise GraphcError(f"{layer.name} has no parameter '{k.name}'", k.loc,
                                  hint=did_you_mean(k.name, list(params)) or _signature(layer))
            if k.name in given:
                raise GraphcError(f"argument '{k.name}' is given twice", k.loc)
            given[k.name] = k.value
        bound: dict[str, Dim] = {}
        # non-tensor arguments first: int arguments are dims the tensor types may use
        for p in sorted(layer.params, key=lambda p: isinstance(p.kind, ast.TypeExpr)):
            e = given.get(p.name, p.default)
            if e is None:
                raise GraphcError(f"{layer.name} is missing the argument '{p.name}'", c.loc,
                                  hint=_signature(layer))
            # a default is evaluated where the layer is defined: the top level
            ctx = caller if p.name in given else self.top
            if isinstance(p.kind, ast.TypeExpr):
                v = self._tensor(e, ctx)
                if not isinstance(v, Value):
                    raise GraphcError(f"{layer.name} expects {p.name}: {p.kind}, got the number {v}", e.loc)
                self._unify(layer, p, v.type, bound, e.loc)
                self._define(fr, p.name, v, p.loc)
            elif p.kind.id == "fn":
                fr.fns[p.name] = self._fn_arg(layer, p, e, ctx)
            else:
                const = self._const(e, ctx)
                if not (isinstance(const, (int, float)) and not isinstance(const, bool)
                        and (p.kind.id == "float" or isinstance(const, int))):
                    raise GraphcError(f"{layer.name} expects {p.name}: {p.kind.id}, got {const!r}", e.loc)
                n = float(const) if p.kind.id == "float" else const
                self._define(fr, p.name, n, p.loc)
                if isinstance(n, int):  # an int parameter (a float one's number was made float)
                    bound[p.name] = n
        return bound

    def _fn_arg(self, layer: ast.Layer, p: ast.LayerParam, e: ast.Expr, ctx: _Frame) -> str:
        target = self._function(e.id, ctx) if isinstance(e, ast.Name) else None
        if target is None:
            raise GraphcError(f"{layer.name} expects {p.name}: fn (an op, a layer or id)", e.loc,
                              hint=did_you_mean(e.id, [*self.layers, *BUILTINS, *REGISTRY, "id"])
                              if isinstance(e, ast.Name) else None)
        return target

    def _unify(self, layer: ast.Layer, p: ast.LayerParam, actual: TensorType,
               bound: dict[str, Dim], loc: Loc) -> None:
        """Match a declared parameter type against an argument's type, binding its dim names."""
        declared = p.kind
        if not isinstance(declared, ast.TypeExpr):  # _bind_args unifies tensor parameters only
            raise InternalError(f"{layer.name}: unifying {p.name}: {declared.id}, not a tensor type")
        mismatch = f"{layer.name} expects {p.name}: {declared}"
        if actual.dtype != declared.dtype or actual.rank != len(declared.dims):
            raise GraphcError(f"{mismatch}, got {actual}", loc)
        for d, size in zip(declared.dims, actual.shape):
            if isinstance(d.value, int):
                if d.value != size:
                    raise GraphcError(f"{mismatch}, got {actual}", loc)
            elif d.value not in bound:
                bound[d.value] = size
            elif bound[d.value] != size:
                raise GraphcError(f"{mismatch} with {d.value} bound to {bound[d.value]}, got {actual}", loc)


def _chain(e: ast.Neg | ast.BinOp) -> tuple[ast.Expr, list[ast.Neg | ast.BinOp]]:
    """A chain of operators down their left operands (a + b - c ..., - - x): its first operand and
    the operators to apply to it, innermost first. A 200,000-term sum nests that deep."""
    chain: list[ast.Neg | ast.BinOp] = []
    x: ast.Expr = e
    while isinstance(x, (ast.Neg, ast.BinOp)):
        chain.append(x)
        x = x.operand if isinstance(x, ast.Neg) else x.left
    return x, chain[::-1]


def _signature(layer: ast.Layer) -> str:
    parts = [f"{p.name}: {p.kind if isinstance(p.kind, ast.TypeExpr) else p.kind.id}" for p in layer.params]
    return f"{layer.name}({', '.join(parts)})"

