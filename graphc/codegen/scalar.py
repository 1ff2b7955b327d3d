"""The Scalar vocabulary of elementwise expressions, implemented with llvmlite instructions."""

from __future__ import annotations

from llvmlite import ir

FTYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
LLTYPES = {**FTYPES, "i32": ir.IntType(32)}


class LLVMScalar:
    """Builds scalar LLVM values for one loop body; `index` gives the loop counters."""

    def __init__(self, b: ir.IRBuilder, dtype: str, index: list[ir.Value]) -> None:
        self.b = b
        self.t = FTYPES[dtype]
        self.suffix = dtype
        self.idx = index

    def _intrinsic(self, name: str, *args: ir.Value) -> ir.Value:
        m = self.b.module
        fname = f"llvm.{name}.{self.suffix}"
        fn = m.globals.get(fname) or ir.Function(m, ir.FunctionType(self.t, [self.t] * len(args)), fname)
        return self.b.call(fn, args)

    def const(self, x: float) -> ir.Value:
        return ir.Constant(self.t, float(x))

    def add(self, a, b):
        return self.b.fadd(a, b)

    def sub(self, a, b):
        return self.b.fsub(a, b)

    def mul(self, a, b):
        return self.b.fmul(a, b)

    def div(self, a, b):
        return self.b.fdiv(a, b)

    def neg(self, a):
        return self.b.fneg(a)

    def exp(self, a):
        return self._intrinsic("exp", a)

    def log(self, a):
        return self._intrinsic("log", a)

    def sqrt(self, a):
        return self._intrinsic("sqrt", a)

    def pow(self, a, b):
        return self._intrinsic("pow", a, b)

    def tanh(self, a):
        # 1 - 2 / (exp(2a) + 1): stays in exp, which LLVM can vectorize
        e = self.exp(self.add(a, a))
        return self.sub(self.const(1.0), self.div(self.const(2.0), self.add(e, self.const(1.0))))

    def max(self, a, b):
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)

    def gt(self, a, b):
        return self.b.uitofp(self.b.fcmp_ordered(">", a, b), self.t)

    def eq(self, a, b):
        return self.b.uitofp(self.b.fcmp_ordered("==", a, b), self.t)

    def select(self, c, a, b):
        return self.b.select(self.b.fcmp_unordered("!=", c, self.const(0.0)), a, b)

    def to_float(self, a):
        return self.b.sitofp(a, self.t)

    def index(self, axis: int):
        return self.b.uitofp(self.idx[axis], self.t)
