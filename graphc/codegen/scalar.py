"""The Scalar vocabulary of elementwise expressions, implemented with llvmlite instructions."""

from __future__ import annotations

from llvmlite import ir

FTYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
LLTYPES = {**FTYPES, "i32": ir.IntType(32)}
I32, I64 = ir.IntType(32), ir.IntType(64)

# erf per dtype: (clamp, p, q). For a = |x| below 1, erf(a) = a + a·p(a²) (p approximates
# erf(a)/a - 1, so the result keeps every bit for tiny x); from 1 on, erf(a) = 1 - e^(-a²)·q(z),
# z = (2 - a)/(2 + a), q approximating erfc(a)·e^(a²) (Weideman's variable: a polynomial in z
# follows it closely over [1, inf)), with a clamped where erf rounds to 1. The coefficients
# (ascending powers) are weighted least-squares fits on Chebyshev nodes against an 80-digit series
# for erf: p's for erf's relative error, with its constant term 2/sqrt(pi) - 1 fixed; q's for the
# absolute error it makes, weight e^(-a²). Evaluated in the dtype: within 1 ulp of erf for f64
# (libm's exp), 1.3 ulp for f32 (its inline exp).
_ERF = {
    "f32": (4.0, (0.1283791670955126, -0.3761262936084381, 0.11283611778538587, -0.026854682613995175,
                  0.005189724254603198, -0.000802101837940883, 7.886295154141122e-05),
            (0.25539567771867844, 0.4271858455617581, 0.24165749102065795, 0.07898519525885112,
             0.003735061956272124, -0.007218398148907808)),
    "f64": (6.0, (0.1283791670955126, -0.3761263890318359, 0.11283791670945888, -0.02686617064330771,
                  0.005223977607381187, -0.0008548325979157319, 0.00012055294844710023,
                  -1.4924733500982012e-05, 1.6447363240063963e-06, -1.620790676342427e-07,
                  1.3717235474922968e-08, -7.790164165474942e-10),
            (0.2553956763105069, 0.42718584741395466, 0.24165819424098825, 0.0789785810331422,
             0.0037328925437873136, -0.006997464466996777, -0.0008471377756940075, 0.000982065332255138,
             4.306222307802346e-05, -0.00017428948128322234, 3.324616080062765e-05,
             1.1522541601927266e-05)),
}


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

    def _muladd(self, a: ir.Value, b: ir.Value, c: ir.Value) -> ir.Value:
        """a·b + c, one fused multiply-add where the target has one (a polynomial's Horner step)."""
        return self._intrinsic("fmuladd", a, b, c)

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
        # ln 2 = hi + lo, hi exact in f32
        r = self._muladd(n, self.const(-1.428606765330187e-06), self._muladd(n, self.const(-0.693145751953125), x))
        p = self.const(1 / 720)
        for c in (1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0):
            p = self._muladd(p, r, self.const(c))
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

    def erf(self, a):
        # both pieces are computed and one selected, so loops vectorize (libm has no vector erf)
        clamp, p, q = _ERF[self.suffix]
        x = self._intrinsic("fabs", a)
        near = self.add(x, self.mul(x, self._poly(p, self.mul(x, x))))
        c = self.min(x, self.const(clamp))  # NaN stays NaN
        z = self.div(self.sub(self.const(2.0), c), self.add(self.const(2.0), c))
        far = self.sub(self.const(1.0), self.mul(self.exp(self.neg(self.mul(c, c))), self._poly(q, z)))
        below = self.b.fcmp_ordered("<", x, self.const(1.0))
        return self._intrinsic("copysign", self.b.select(below, near, far), a)

    def _poly(self, coeffs: tuple[float, ...], t: ir.Value) -> ir.Value:
        """sum of coeffs[k]·t^k, by Horner's rule."""
        acc = self.const(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self._muladd(acc, t, self.const(c))
        return acc

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
