"""The Scalar vocabulary of elementwise expressions, implemented with llvmlite instructions."""

from __future__ import annotations

from llvmlite import ir

FTYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
LLTYPES = {**FTYPES, "i32": ir.IntType(32)}
I32, I64 = ir.IntType(32), ir.IntType(64)


class LLVMScalar:
    """Builds scalar LLVM values for one loop body; `index` gives the loop counters over `shape`."""

    def __init__(self, b: ir.IRBuilder, dtype: str, index: list[ir.Value],
                 shape: tuple[int, ...]) -> None:
        self.b = b
        self.t = FTYPES[dtype]
        self.suffix = dtype
        self.idx = index
        self.shape = shape

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
        if self.suffix != "f32":
            return self._intrinsic("exp", a)  # f64 (gradient checks) keeps libm's precision
        # f32 inline, so loops vectorize (llvm.exp becomes one libm call per lane): exp(a) =
        # 2^n · e^r, n = round(a·log2 e), |r| <= ln2/2, e^r by its degree-6 Taylor polynomial
        # (truncation < 1.2e-7 relative), 2^n as two powers of two built in the exponent bits
        b = self.b
        lo, hi = -87.3, 88.7228  # e^lo is about the smallest normal float, e^hi the largest float
        x = self.max(self.const(lo), b.select(b.fcmp_ordered(">", a, self.const(hi)), self.const(hi), a))
        n = self._intrinsic("rint", self.mul(x, self.const(1.4426950408889634)))
        r = self.sub(self.sub(x, self.mul(n, self.const(0.693145751953125))),
                     self.mul(n, self.const(1.428606765330187e-06)))  # ln 2 = hi + lo, hi exact in f32
        p = self.const(1 / 720)
        for c in (1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):
            p = self.add(self.mul(p, r), self.const(c))
        k = b.fptosi(n, I32)
        half = b.ashr(k, I32(1))
        for e in (half, b.sub(k, half)):  # each in [-63, 64]: a normal float
            p = self.mul(p, b.bitcast(b.shl(b.add(e, I32(127)), I32(23)), self.t))
        p = b.select(b.fcmp_ordered("<", a, self.const(lo)), self.const(0.0), p)
        p = b.select(b.fcmp_ordered(">", a, self.const(hi)), self.const(float("inf")), p)
        return b.select(b.fcmp_unordered("uno", a, a), a, p)  # NaN stays NaN

    def log(self, a):
        return self._intrinsic("log", a)

    def sqrt(self, a):
        return self._intrinsic("sqrt", a)

    def pow(self, a, b):
        return self._intrinsic("pow", a, b)

    def sin(self, a):
        return self._intrinsic("sin", a)

    def cos(self, a):
        return self._intrinsic("cos", a)

    def floor(self, a):
        return self._intrinsic("floor", a)

    def tanh(self, a):
        # 1 - 2 / (exp(2a) + 1): stays in exp, which LLVM can vectorize
        e = self.exp(self.add(a, a))
        return self.sub(self.const(1.0), self.div(self.const(2.0), self.add(e, self.const(1.0))))

    def max(self, a, b):
        return self.b.select(self.b.fcmp_ordered(">", a, b), a, b)

    def min(self, a, b):
        return self.b.select(self.b.fcmp_ordered(">", a, b), b, a)

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

    def u32(self, x: int):
        return ir.Constant(I32, x & 0xFFFFFFFF)

    def to_u32(self, a):
        # through i64, so a negative or large value wraps (fptoui would be undefined for it)
        return self.b.trunc(self.b.fptosi(a, I64), I32)

    def flat_index(self):
        pos, stride = ir.Constant(I64, 0), 1
        for i, d in zip(reversed(self.idx), reversed(self.shape)):
            pos = self.b.add(pos, self.b.mul(i, ir.Constant(I64, stride)))
            stride *= d
        return self.b.trunc(pos, I32)

    def ixor(self, a, b):
        return self.b.xor(a, b)

    def ishr(self, a, b):
        return self.b.lshr(a, b)

    def imul(self, a, b):
        return self.b.mul(a, b)

    def unit(self, a):
        top = self.b.uitofp(self.b.lshr(a, self.u32(8)), self.t)
        return self.b.fmul(top, self.const(2.0 ** -24))
