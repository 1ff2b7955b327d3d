"""Tests generated over the whole op registry: shape rule vs ref, compiled kernel vs ref, vjp vs
float64 central differences of the ref, plus random broadcasting cases. Shapes are non-square."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphc.autodiff.graphs import gradient_graph
from graphc.driver import compile_graph
from graphc.ir.bind import bind
from graphc.ir.graph import NP_DTYPES, Builder, Graph, Input, TensorType, Value
from graphc.ops import REGISTRY, ShapeError

F = lambda *s: TensorType("f32", s)
I = lambda *s: TensorType("i32", s)



def _cell() -> Graph:
    """A scan body: carries h [3, 4] and a running sum [4], one step x [3, 2], weights w [2, 4];
    per-step values: the new h and a product that is no carry."""
    g = Graph("cell")
    h, acc, x, w = (Value(n, t) for n, t in (("h", F(3, 4)), ("acc", F(4)), ("x", F(3, 2)), ("w", F(2, 4))))
    g.inputs = [Input(v) for v in (h, acc, x, w)]
    b = Builder(g)
    new = b.tanh(b.add(b.mul(h, 0.5), b.matmul(x, w)))
    g.outputs = {"h": new, "acc": b.add(acc, b.sum(new, axes=0)), "y0": new, "y1": b.mul(new, h)}
    return g


CELL = _cell()
SCAN = (F(3, 4), F(4), F(5, 3, 2), F(2, 4))  # inits, 5 steps of x, the weights

# Generic input patterns by arity; ops needing attrs or special operands list their own cases.
GENERIC = {1: [((F(3, 5),), {}), ((F(2, 3, 4),), {})],
           2: [((F(3, 5), F(3, 5)), {}), ((F(3, 5), F(5)), {}), ((F(3, 1), F(1, 5)), {}),
               ((F(4, 3, 5), F(3, 1)), {}), ((F(3, 5), F()), {})]}
CASES = {
    "matmul": [((F(3, 4), F(4, 5)), {}), ((F(4, 3), F(4, 5)), {"ta": True}),
               ((F(3, 4), F(5, 4)), {"tb": True}), ((F(4, 3), F(5, 4)), {"ta": True, "tb": True}),
               # batch dims: shared weights (one GEMM over the rows), per-batch, broadcast both ways
               ((F(2, 3, 4), F(4, 5)), {}), ((F(2, 4, 3), F(5, 4)), {"ta": True, "tb": True}),
               ((F(2, 3, 3, 4), F(2, 3, 4, 5)), {}), ((F(2, 1, 3, 4), F(3, 5, 4)), {"tb": True}),
               ((F(3, 4), F(2, 4, 5)), {}), ((F(2, 4, 3), F(1, 2, 4, 5)), {"ta": True})],
    "sum": [((F(3, 5),), {}), ((F(3, 5),), {"axes": 0}), ((F(2, 3, 4),), {"axes": (0, 2), "keepdims": True}),
            ((F(2, 3, 4),), {"axes": -1})],
    "broadcast_to": [((F(5),), {"shape": (3, 5)}), ((F(3, 1),), {"shape": (2, 3, 4)})],
    "transpose": [((F(3, 5),), {}), ((F(2, 3, 4),), {"perm": (1, 2, 0)})],
    "reshape": [((F(3, 4),), {"shape": (2, 6)}), ((F(2, 3, 4),), {"shape": (4, -1)})],
    "flatten": [((F(2, 3, 4),), {})],
    "onehot": [((I(3),), {"n": 5}), ((I(2, 3),), {"n": 4})],
    "softmax_cross_entropy": [((F(3, 5), I(3)), {}), ((F(2, 3, 5), I(2, 3)), {})],  # [B, T, V] logits too
    "accuracy": [((F(3, 5), I(3)), {}), ((F(2, 3, 5), I(2, 3)), {})],
    "mse": [((F(3, 5), F(3, 5)), {})],
    "softmax": [((F(3, 5),), {}), ((F(3, 5),), {"axis": 0})],
    "log_softmax": [((F(3, 5),), {}), ((F(2, 3, 4),), {"axis": 1})],
    "window": [((F(2, 3, 5, 4),), {"kernel": (2, 3)}),
               ((F(2, 2, 6, 5),), {"kernel": 3, "stride": 2, "padding": 1, "dilation": (1, 2)})],
    "fold": [((F(3, 2, 3, 2, 4, 2),), {"size": (5, 4), "kernel": (2, 3)}),
             ((F(2, 3, 3, 2, 3, 2),), {"size": (6, 5), "kernel": 3, "stride": 2, "padding": 1,
                                        "dilation": (1, 2)})],
    "conv2d": [((F(2, 3, 6, 5), F(4, 3, 3, 2)), {}),
               ((F(2, 4, 7, 6), F(6, 2, 3, 3)), {"stride": 2, "padding": 1, "groups": 2}),
               ((F(1, 2, 7, 6), F(3, 2, 2, 3)), {"dilation": 2, "padding": (1, 0)})],
    "max_pool2d": [((F(2, 3, 6, 4),), {"kernel": 2}),                       # tiles the image
                   ((F(2, 3, 7, 5),), {"kernel": 2}),                       # drops the last row
                   ((F(2, 3, 7, 5),), {"kernel": 3, "stride": 2, "padding": 1})],  # overlaps
    "global_avg_pool": [((F(2, 3, 5, 4),), {})],
    "slice": [((F(3, 5),), {"axis": 1, "start": 1, "stop": 4}), ((F(2, 3, 4),), {"axis": 0, "start": 1, "stop": 2})],
    "pad": [((F(3, 5),), {"axis": 1, "before": 2, "after": 1}),
            ((F(2, 3, 4),), {"axis": -1, "after": 2, "value": 1.5})],
    "concat": [((F(3, 5), F(2, 5)), {}), ((F(2, 3, 4), F(2, 2, 4)), {"axis": 1})],
    "iota": [((F(3, 5),), {"axis": 1}), ((F(2, 3, 4),), {"axis": 0})],
    "where": [((F(3, 5), F(3, 5), F(3, 5)), {}), ((F(3, 1), F(1, 5), F(5)), {}), ((F(4, 3, 5), F(3, 5), F()), {})],
    # x, then the step counter (sampled like any float operand: the hash truncates it)
    "dropout": [((F(3, 5), F()), {"p": 0.3, "seed": 7}), ((F(2, 3, 4), F()), {})],
    "gather": [((F(5, 3), I(4)), {}), ((F(6, 2, 3), I(2, 3)), {}), ((F(7), I(3, 2)), {})],
    "scatter_add": [((F(4, 3), I(4)), {"rows": 5}), ((F(2, 3, 4), I(2, 3)), {"rows": 6}),
                    ((F(3, 2), I(3, 2)), {"rows": 4})],
    "extern_call": [((F(3, 5),), {"slot": "cb"})],
    "pack": [((F(3, 5), F(4), F()), {}), ((F(2, 3, 4),), {})],
    "unpack": [((F(23),), {"offset": 4, "shape": (3, 5)}), ((F(7),), {"offset": 0, "shape": (7,)})],
    "gelu": [((F(3, 5),), {}), ((F(2, 3, 4),), {"tanh": True})],
    # each result: a final carry, per-step values (one the carry itself), forwards and backwards
    "scan": [(SCAN, {"body": CELL, "carries": 2, "result": r, "reverse": rev}) for r in range(4)
             for rev in (False, True)],
}
CASES["fold"].append(((F(3, 1, 1, 2, 4, 2),), {"size": (5, 4), "kernel": (2, 3)}))  # one value per patch
CASES["fold_taps"] = CASES["fold"]
CASES["avg_pool2d"] = CASES["max_pool2d"]
for red in ("max", "mean"):
    CASES[red] = CASES["sum"]
POSITIVE = {"log", "sqrt", "pow"}  # ops whose float operands must be > 0
MASKS = {("where", 0)}  # (op, operand) holding 0 or 1, a selection (no gradient: it is not differentiable)


def cases(name):
    opdef = REGISTRY[name]
    out = []
    for types, attrs in CASES.get(name, GENERIC.get(opdef.nargs, [])):
        try:
            opdef.shape(list(types), {**opdef.defaults, **attrs})
        except ShapeError:
            continue
        out.append((types, attrs))
    return out


ALL = [(name, i, c) for name in sorted(REGISTRY) for i, c in enumerate(cases(name))]


def test_every_op_has_cases():
    assert not [n for n in REGISTRY if not cases(n)], "every registered op needs a test case"


def sample(t: TensorType, rng, name, classes=5):
    if t.dtype == "i32":
        return rng.integers(0, classes, t.shape).astype(np.int32)
    mag = rng.uniform(0.5, 2.0, t.shape)
    x = mag if name in POSITIVE else mag * rng.choice([-1, 1], t.shape)
    return np.asarray(x, np.float64)


# How the op's output y becomes the loss, with its NumPy twin: weighted by a random input r (a
# cotangent that is a tensor), or unweighted, where the cotangent reaching y is a constant: a plain
# sum, a mean, and a linear chain after the op (scale, shift, flatten), as users write losses.
LOSSES = {
    "weighted": (lambda b, y, r: b.sum(b.mul(y, r)), lambda y, r: np.sum(y * r)),
    "sum": (lambda b, y, r: b.sum(y), lambda y, r: np.sum(y)),
    "mean": (lambda b, y, r: b.mean(y), lambda y, r: np.mean(y)),
    "chain": (lambda b, y, r: b.sum(b.reshape(b.sub(b.neg(b.mul(y, 0.5)), 1.0), shape=(-1,))),
              lambda y, r: np.sum(-(y * 0.5) - 1.0)),
}


def build(name, types, attrs, loss="weighted"):
    g = Graph(name)
    b = Builder(g)
    g.inputs = [Input(Value(f"x{i}", t), nograd=t.dtype == "i32" or (name, i) in MASKS)
                for i, t in enumerate(types)]
    y = b.op(name, *[i.value for i in g.inputs], name_out="y", **attrs)
    r = Value("r", y.type)
    if loss == "weighted":
        g.inputs.append(Input(r, nograd=True))
    g.outputs = {"loss": LOSSES[loss][0](b, y, r), "y": y}
    g.loss = "loss"
    return g


def feeds_for(name, types, attrs, seed=0):
    rng = np.random.default_rng(seed)
    opdef = REGISTRY[name]
    bounds = opdef.indices(list(types), {**opdef.defaults, **attrs}) if opdef.indices else {}
    xs = [rng.integers(0, 2, t.shape).astype(np.float64) if (name, j) in MASKS else sample(t, rng, name, bounds.get(j, 5))
          for j, t in enumerate(types)]
    out_t = opdef.shape(list(types), {**opdef.defaults, **attrs})
    return xs, rng.normal(size=out_t.shape)


def run(step, **feeds):
    """Run a compiled step with its extern_call slots bound to callbacks that leave the values, as
    the op's reference assumes."""
    for slot in step.extern_slots:
        step.bind_extern(slot, lambda values: None)
    return step.run(**feeds)


def ref(name, xs, attrs):
    opdef = REGISTRY[name]
    return np.asarray(opdef.ref(*xs, **{**opdef.defaults, **attrs}))


@pytest.mark.parametrize("name,i,case", ALL, ids=[f"{n}-{i}" for n, i, _ in ALL])
def test_shape_rule_matches_ref(name, i, case):
    types, attrs = case
    xs, _ = feeds_for(name, types, attrs)
    t = REGISTRY[name].shape(list(types), {**REGISTRY[name].defaults, **attrs})
    y = ref(name, [x.astype(NP_DTYPES[ty.dtype]) for x, ty in zip(xs, types)], attrs)
    assert y.shape == tuple(t.shape)
    assert y.dtype == NP_DTYPES[t.dtype]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name,i,case", ALL, ids=[f"{n}-{i}" for n, i, _ in ALL])
def test_compiled_kernel_matches_ref(name, i, case, dtype):
    types, attrs = case
    xs, r = feeds_for(name, types, attrs)
    g = bind(build(name, types, attrs), {}, dtype)
    cast = [x.astype(NP_DTYPES[dtype] if t.is_float else np.int32) for x, t in zip(xs, types)]
    out = run(compile_graph(g).step, **{f"x{j}": x for j, x in enumerate(cast)}, r=r)
    want = ref(name, cast, attrs)
    tol = 2e-5 if dtype == "f32" else 1e-12
    np.testing.assert_allclose(out["y"], want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("axes", [1, 0])  # along rows (in a register), down columns (in memory)
def test_max_is_nan_wherever_its_slice_holds_one(dtype, axes):
    """A NaN first, in the middle or last of the reduced slice: the max is NaN, as NumPy's."""
    x = np.arange(5 * 37, dtype=NP_DTYPES[dtype]).reshape(5, 37) % 11
    if axes:
        x[1, 0] = x[2, 18] = x[3, 36] = np.nan
    else:
        x[0, 1] = x[2, 18] = x[4, 36] = np.nan
    g = Graph("m")
    b = Builder(g)
    g.inputs = [Input(Value("x", TensorType(dtype, x.shape)))]
    g.outputs["y"] = b.max(g.inputs[0].value, axes=axes)
    out = compile_graph(g).step(x=x)["y"]
    np.testing.assert_array_equal(out, np.max(x, axis=axes))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_max_pool_is_nan_wherever_its_patch_holds_one(dtype):
    """2x2 pooling (a reduction unrolled over each patch, vectorized across the row): a NaN in any
    tap makes its patch's max NaN; a patch of -inf pools to -inf."""
    x = (np.arange(2 * 3 * 4 * 6, dtype=NP_DTYPES[dtype]).reshape(2, 3, 4, 6) % 7) - 3
    x[0, 0, 0, 0] = x[0, 1, 1, 3] = x[1, 2, 3, 5] = x[1, 0, 2, 1] = np.nan
    x[1, 1, 2:4, 2:4] = -np.inf
    g = Graph("p")
    b = Builder(g)
    g.inputs = [Input(Value("x", TensorType(dtype, x.shape)))]
    g.outputs["y"] = b.op("max_pool2d", g.inputs[0].value, kernel=2)
    out = compile_graph(g).step(x=x)["y"]
    want = x.reshape(2, 3, 2, 2, 3, 2).max(axis=(3, 5))
    assert np.isnan(want).sum() == 4 and np.isneginf(want).sum() == 1
    np.testing.assert_array_equal(out, want)


GRAD = [(n, i, c) for n, i, c in ALL if REGISTRY[n].vjp is not None]


# the constant cotangents run in the full tier; the weighted one in the fast tier too
LOSS_TIERS = [loss if loss == "weighted" else pytest.param(loss, marks=pytest.mark.slow) for loss in LOSSES]


@pytest.mark.parametrize("loss", LOSS_TIERS)
@pytest.mark.parametrize("name,i,case", GRAD, ids=[f"{n}-{i}" for n, i, _ in GRAD])
def test_vjp_matches_numerical_gradient(name, i, case, loss):
    types, attrs = case
    xs, r = feeds_for(name, types, attrs)
    g = gradient_graph(bind(build(name, types, attrs, loss), {}, "f64"))
    feeds = {f"x{j}": x for j, x in enumerate(xs)} | ({"r": r} if loss == "weighted" else {})
    out = run(compile_graph(g, threads=1).step, **feeds)
    f = lambda xp: float(LOSSES[loss][1](ref(name, xp, attrs), r))
    h = 1e-6
    for j, (x, t) in enumerate(zip(xs, types)):
        if not t.is_float or (name, j) in MASKS:
            continue
        num = np.zeros_like(x)
        for k in np.ndindex(x.shape):
            vals = []
            for d in (h, -h):
                xp = [a.copy() for a in xs]
                xp[j][k] += d
                vals.append(f(xp))
            num[k] = (vals[0] - vals[1]) / (2 * h)
        np.testing.assert_allclose(out[f"d.x{j}"], num, rtol=1e-6, atol=1e-7, err_msg=f"d/d x{j}")


@pytest.mark.parametrize("dtype,ulps", [("f32", 1.5), ("f64", 2.0)])
def test_erf_within_ulps_over_its_whole_range(dtype, ulps):
    """The generated erf is a polynomial per range (codegen/scalar.py), checked beyond the sampled
    cases: tiny, negative, around the switch at 1, the tail where it rounds to 1, 0, -0, inf, NaN."""
    npt = NP_DTYPES[dtype]
    x = np.concatenate([np.linspace(-7, 7, 4001), 10.0 ** -np.arange(1, 30), -(10.0 ** -np.arange(1, 30)),
                        np.nextafter(1.0, [0.0, 2.0]), [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(npt)
    g = Graph("erf")
    v = Value("x", TensorType(dtype, x.shape))
    g.inputs = [Input(v)]
    g.outputs = {"y": Builder(g).erf(v)}
    g.loss = "y"
    got = compile_graph(g).step(x=x)["y"]
    want = np.array([math.erf(t) for t in x.astype(np.float64)])  # math.erf(nan) is nan
    ulp = np.spacing(np.abs(want).astype(npt)).astype(np.float64)
    np.testing.assert_array_less(np.abs(got - want)[~np.isnan(want)] / ulp[~np.isnan(want)], ulps)
    assert np.isnan(got[-1]) and np.signbit(got[-4])  # erf(-0) = -0


def test_fan_out_gradients_add_up():
    g = Graph("fan")
    b = Builder(g)
    x = Value("x", F(3, 5))
    g.inputs = [Input(x)]
    g.outputs = {"loss": b.sum(b.add(b.mul(x, x), b.exp(x)))}  # x used three times
    g.loss = "loss"
    xs = np.random.default_rng(0).normal(size=(3, 5))
    out = compile_graph(gradient_graph(bind(g, {}, "f64"))).step(x=xs)
    np.testing.assert_allclose(out["d.x"], 2 * xs + np.exp(xs), rtol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_random_broadcasting(seed):
    rng = np.random.default_rng(seed)
    rank = rng.integers(1, 4)
    full = tuple(int(d) for d in rng.integers(2, 6, rank))
    shapes = []
    for _ in range(2):
        keep = rng.integers(0, rank + 1)
        s = full[rank - keep:]
        shapes.append(tuple(1 if rng.random() < 0.3 else d for d in s))
    types = [F(*s) for s in shapes]
    for name in ("add", "mul", "sub", "div"):
        xs, r = feeds_for(name, types, {}, seed)
        g = gradient_graph(bind(build(name, types, {}), {}, "f64"))
        out = compile_graph(g).step(x0=xs[0], x1=xs[1], r=r)
        np.testing.assert_allclose(out["y"], ref(name, xs, {}), rtol=1e-12)
        for j in range(2):
            assert out[f"d.x{j}"].shape == shapes[j]


ODD_VALUES = ["x", (1, "a"), ((1,),), -3, 2.5, True, None, (), 10**12, (0,), (-1, -1)]


@pytest.mark.parametrize("name,i,case", ALL, ids=[f"{n}-{i}" for n, i, _ in ALL])
def test_odd_attribute_values_are_the_users_errors(name, i, case):
    """Each shape rule checks every attribute a user can write: a value of the wrong kind or range is
    a GraphcError naming the op, never an exception from inside the rule (an InternalError)."""
    from graphc.errors import GraphcError, InternalError
    types, attrs = case
    for attr in REGISTRY[name].attributes()[0]:
        for v in ODD_VALUES:
            b = Builder(Graph("odd"))
            try:
                b.op(name, *[Value(f"x{j}", t) for j, t in enumerate(types)], **{**attrs, attr: v})
            except InternalError as e:
                pytest.fail(f"{name}({attr}={v!r}): {e}")
            except GraphcError as e:  # the rule's message, or the size limit's naming the type
                assert str(e).startswith(f"error: {name}: ") or "elements; a tensor holds at most" in str(e), e
