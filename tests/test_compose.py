"""Random compositions of ops, each checked the way `graphc check` checks a model: every gradient
of a small random graph (several ops, fan-out, broadcasting, layers with params, weighted and
unweighted losses) against float64 central differences, and its loss against the ops' NumPy
references. Shapes are drawn non-square."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.ir.bind import bind
from graphc.ir.graph import Builder, Graph, Input, Param, TensorType, Value
from graphc.ops import REGISTRY
from graphc.runtime.train.gradcheck import check_graph

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

GRAPHS = 240
PER_TEST = 8  # graphs a test case builds: failures name the seed


class Composer:
    """Builds a random float64 graph over 2-D values, keeping every value it made for reuse."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.g = Graph(f"compose{seed}")
        self.b = Builder(self.g)
        self.params: dict[str, np.ndarray] = {}
        self.feeds: dict[str, np.ndarray] = {}
        m, n = self.rng.choice(np.arange(2, 6), 2, replace=False)
        self.pool = [self.input((int(m), int(n)))]

    def dims(self) -> int:
        return int(self.rng.integers(2, 6))

    def input(self, shape: tuple[int, ...], grad: bool = True) -> Value:
        v = Value(f"x{len(self.g.inputs)}", TensorType("f64", shape))
        self.g.inputs.append(Input(v, nograd=not grad))
        self.feeds[v.name] = self.rng.normal(size=shape)
        return v

    def param(self, shape: tuple[int, ...]) -> Value:
        v = Value(f"p{len(self.g.params)}", TensorType("f64", shape))
        self.g.params.append(Param(v, "normal"))
        self.params[v.name] = self.rng.normal(size=shape) / np.sqrt(shape[0])
        return v

    def pick(self) -> Value:
        """A value made earlier: the newest most often, any of them sometimes (fan-out)."""
        return self.pool[-1] if self.rng.random() < 0.5 else self.pool[self.rng.integers(len(self.pool))]

    def partner(self, v: Value) -> Value:
        """A value v broadcasts with: one of v's shape, a row or column of one, a scalar, or a new input."""
        same = [u for u in self.pool if u.shape == v.shape and u is not v]
        m, n = v.shape
        shape = [(m, n), (1, n), (m, 1), (n,), ()][self.rng.integers(5)]
        if same and self.rng.random() < 0.5:
            return same[self.rng.integers(len(same))]
        if self.rng.random() < 0.5:
            return self.input(shape)
        return self.b.sum(v, axes=1, keepdims=True) if shape == (m, 1) else \
            self.b.mean(v, axes=0, keepdims=True) if shape == (1, n) else self.b.max(v)

    def step(self) -> Value:
        b, v = self.b, self.pick()
        m, n = v.shape
        kind = self.rng.choice(list(self.KINDS))
        return self.KINDS[kind](self, b, v, m, n)

    def dense(self, b, v, m, n):
        h = self.dims()
        return b.add(b.matmul(v, self.param((n, h))), self.param((h,)))

    def gram(self, b, v, m, n):
        u = self.partner(v) if self.rng.random() < 0.3 else v
        u = b.broadcast_to(u, shape=(m, n))
        return b.matmul(v, u, tb=True) if self.rng.random() < 0.5 else b.matmul(v, u, ta=True)

    def pool2d(self, b, v, m, n):
        img = b.reshape(v, shape=(1, 1, m, n))
        k = min(2, m, n)
        choice = self.rng.integers(3)
        if choice == 0:
            y = b.avg_pool2d(img, kernel=k, stride=1, padding=int(self.rng.integers(0, k)))
        elif choice == 1:
            y = b.max_pool2d(img, kernel=k, stride=1)
        else:
            y = b.conv2d(img, self.param((2, 1, k, k)), padding=int(self.rng.integers(0, k)))
        c, oh, ow = y.shape[1:]
        return b.reshape(y, shape=(c * oh, ow))

    def cut(self, b, v, m, n):
        axis = int(self.rng.integers(2))
        size = v.shape[axis]
        start = int(self.rng.integers(0, size))
        stop = int(self.rng.integers(start + 1, size + 1))
        y = b.slice(v, axis=axis, start=start, stop=stop)
        return b.pad(y, axis=1 - axis, before=int(self.rng.integers(0, 2)), after=1,
                     value=float(self.rng.choice([0.0, 0.5])))

    def join(self, b, v, m, n):
        u = self.b.tanh(self.b.transpose(v)) if m == n else self.input((m, self.dims()))
        return b.concat(v, u, axis=1)

    KINDS = {
        "unary": lambda self, b, v, m, n: b.op(str(self.rng.choice(
            ["tanh", "sigmoid", "sin", "cos", "neg", "leaky_relu", "relu"])), v),
        "exp": lambda self, b, v, m, n: b.exp(b.tanh(v)),
        "log": lambda self, b, v, m, n: b.log(b.add(b.mul(v, v), 1.0)),
        "sqrt": lambda self, b, v, m, n: b.sqrt(b.add(b.mul(v, v), 0.5)),
        "add": lambda self, b, v, m, n: b.add(v, self.partner(v)),
        "sub": lambda self, b, v, m, n: b.sub(self.partner(v), v),
        "mul": lambda self, b, v, m, n: b.mul(v, self.partner(v)),
        "div": lambda self, b, v, m, n: b.div(v, b.add(b.mul(self.partner(v), self.partner(v)), 1.0)),
        "scale": lambda self, b, v, m, n: b.sub(b.mul(v, float(self.rng.normal())), 0.25),
        "minmax": lambda self, b, v, m, n: b.maximum(v, b.minimum(self.partner(v), 0.3)),
        "softmax": lambda self, b, v, m, n: b.op(str(self.rng.choice(["softmax", "log_softmax"])), v,
                                                 axis=int(self.rng.integers(2))),
        "transpose": lambda self, b, v, m, n: b.transpose(v),
        "reshape": lambda self, b, v, m, n: b.reshape(b.flatten(b.reshape(v, shape=(1, m, n))), shape=(n, m)),
        "reduce": lambda self, b, v, m, n: b.op(str(self.rng.choice(["sum", "mean", "max"])), v,
                                                axes=int(self.rng.integers(2)), keepdims=True),
        "dense": dense, "gram": gram, "pool2d": pool2d, "cut": cut, "join": join,
    }

    def loss(self, y: Value) -> Value:
        """Unweighted (the cotangents that reach y are constants) or weighted by a random input."""
        b = self.b
        kind = self.rng.integers(4)
        if kind == 0:
            return b.sum(y)
        if kind == 1:
            return b.mean(b.mul(y, 0.5))
        if kind == 2:  # a second head: two paths into the loss
            return b.add(b.mean(y), b.sum(b.tanh(self.pick())))
        return b.sum(b.mul(y, self.input(y.shape, grad=False)))

    def build(self) -> Graph:
        for _ in range(self.rng.integers(3, 8)):
            y = self.step()
            while y.type.rank != 2:  # a reduction to a scalar or vector: back to a matrix
                y = self.b.reshape(y, shape=(1, -1))
            self.pool.append(y)
        self.g.outputs = {"loss": self.loss(self.pool[-1])}
        self.g.loss = "loss"
        return bind(self.g, {})


def reference_loss(g: Graph, feeds: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> float:
    """The graph evaluated by its ops' NumPy references."""
    env = {v.name: a for v, a in [(i.value, feeds[i.value.name]) for i in g.inputs]
           + [(p.value, params[p.value.name]) for p in g.params]}
    val = lambda v: np.full(v.shape, v.const) if v.const is not None else env[v.name]
    for n in g.nodes:
        opdef = REGISTRY[n.op]
        env[n.out.name] = np.asarray(opdef.ref(*map(val, n.inputs), **n.attrs))
    return float(val(g.outputs[g.loss]))


@pytest.mark.parametrize("first", range(0, GRAPHS, PER_TEST))
def test_random_compositions(first):
    for seed in range(first, first + PER_TEST):
        c = Composer(seed)
        g = c.build()
        want = reference_loss(g, c.feeds, c.params)
        report = check_graph(g, c.params, c.feeds)
        assert report["loss"] == pytest.approx(want, rel=1e-9, abs=1e-9), f"seed {seed}: loss"
        bad = [r for r in report["params"] if r["max_rel_error"] > 1e-4]
        assert report["ok"], f"seed {seed}: gradients differ: {bad}"
        assert {r["name"] for r in report["params"]} == set(c.params) | {
            i.value.name for i in g.inputs if not i.nograd}, f"seed {seed}"
