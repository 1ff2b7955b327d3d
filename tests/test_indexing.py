"""Data-dependent indexing, accumulate-into and external calls: gather, scatter_add and extern_call
compiled and run against NumPy, on one and two threads, with bad indices and bound callbacks."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from graphc.autodiff.graphs import gradient_graph
from graphc.codegen.backend import Build, CpuBackend
from graphc.driver import compile_graph
from graphc.ir.bind import bind
from graphc.ir.graph import NP_DTYPES, Builder, Graph, Input, TensorType, Value
from graphc.passes.fuse import KernelKind
from graphc.runtime.execute.step import EXTERN, IndexFault


def graph(inputs: dict[str, TensorType], body) -> Graph:
    """A graph of `inputs` (i32 ones nograd) whose outputs `body(b, *values)` returns as a dict."""
    g = Graph("t")
    b = Builder(g)
    g.inputs = [Input(Value(k, t), nograd=t.dtype == "i32") for k, t in inputs.items()]
    g.outputs = body(b, *[i.value for i in g.inputs])
    return g


def compiled(g: Graph, dtype: str = "f32", threads: int = 1):
    return compile_graph(bind(g, {}, dtype), threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_gather_and_scatter_match_numpy(dtype, threads):
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 2, 3)).astype(NP_DTYPES[dtype])
    idx = rng.integers(0, 7, (4, 5)).astype(np.int32)
    g = rng.normal(size=(4, 5, 2, 3)).astype(NP_DTYPES[dtype])
    step = compiled(graph({"w": TensorType("f32", (7, 2, 3)), "i": TensorType("i32", (4, 5)),
                           "g": TensorType("f32", (4, 5, 2, 3))},
                          lambda b, w, i, gv: {"rows": b.gather(w, i), "sums": b.scatter_add(gv, i, rows=9)}),
                    dtype, threads).step
    out = step.run(w=table, i=idx, g=g)
    np.testing.assert_array_equal(out["rows"], table[idx])
    want = np.zeros((9, 2, 3), g.dtype)
    np.add.at(want, idx, g)  # one add per index position, in order: the kernel's sums exactly
    np.testing.assert_array_equal(out["sums"], want)


def test_scatter_splits_columns_and_is_bit_identical_across_threads():
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 40, 600).astype(np.int32)  # many repeats
    g = (rng.normal(size=(600, 48)) * 10.0 ** rng.integers(-3, 4, (600, 48))).astype(np.float32)
    graph_ = graph({"g": TensorType("f32", (600, 48)), "i": TensorType("i32", (600,))},
                   lambda b, gv, i: {"s": b.scatter_add(gv, i, rows=40)})
    outs = []
    for threads in (1, 2):
        c = compiled(graph_, threads=threads)
        outs.append(np.array(c.step.run(g=g, i=idx)["s"]))
    module = str(CpuBackend().module(c.schedule, "t", Build(threads=2)))
    assert "scatter" in module and "_task" in module  # two threads, each its own columns
    np.testing.assert_array_equal(outs[0], outs[1])
    want = np.zeros((40, 48), np.float32)
    np.add.at(want, idx, g)
    np.testing.assert_array_equal(outs[0], want)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_index_out_of_range_is_a_clear_error(threads):
    table = np.arange(256 * 80, dtype=np.float32).reshape(256, 80)
    c = compiled(graph({"w": TensorType("f32", (256, 80)), "i": TensorType("i32", (300,))},
                       lambda b, w, i: {"y": b.gather(w, i), "s": b.scatter_add(b.gather(w, i), i, rows=256)}),
                 threads=threads)
    idx = np.arange(300, dtype=np.int32) % 256
    bad = idx.copy()
    bad[123] = 300
    with pytest.raises(IndexFault, match=r"gather: index 300 out of range \[0, 256\)"):
        c.step.run(w=table, i=bad)
    bad[123] = -1
    with pytest.raises(IndexFault, match=r"index -1 out of range \[0, 256\)"):
        c.step.run(w=table, i=bad)
    # the step runs on once the data is right
    np.testing.assert_array_equal(c.step.run(w=table, i=idx)["y"], table[idx])


def test_scatter_reports_its_own_bad_index():
    c = compiled(graph({"g": TensorType("f32", (3, 2)), "i": TensorType("i32", (3,))},
                       lambda b, gv, i: {"s": b.scatter_add(gv, i, rows=4)}))
    with pytest.raises(IndexFault, match=r"scatter_add: index 4 out of range \[0, 4\)"):
        c.step.run(g=np.ones((3, 2)), i=np.array([0, 4, 1]))


def test_gather_fuses_with_the_elementwise_ops_it_feeds():
    rng = np.random.default_rng(2)
    w, r = rng.normal(size=(6, 5)), rng.normal(size=(3, 4, 5))
    idx = rng.integers(0, 6, (3, 4)).astype(np.int32)
    c = compiled(graph({"w": TensorType("f32", (6, 5)), "i": TensorType("i32", (3, 4)),
                        "r": TensorType("f32", (3, 4, 5))},
                       lambda b, wv, i, rv: {"y": b.tanh(b.mul(b.gather(wv, i), rv))}), "f64")
    (k,) = c.schedule.kernels
    assert k.kind is KernelKind.ELEMENTWISE and [n.op for n in k.nodes] == ["gather", "mul", "tanh"]
    np.testing.assert_allclose(c.step.run(w=w, i=idx, r=r)["y"], np.tanh(w[idx] * r), rtol=1e-12)


def test_gather_gradient_with_repeated_indices_matches_numerical_differences():
    rng = np.random.default_rng(3)
    w, r = rng.normal(size=(5, 3)), rng.normal(size=(2, 4, 3))
    idx = np.array([[1, 3, 1, 4], [3, 3, 0, 1]], np.int32)  # row 2 never, rows 1 and 3 three times
    g = graph({"W": TensorType("f64", (5, 3)), "i": TensorType("i32", (2, 4)), "r": TensorType("f64", (2, 4, 3))},
              lambda b, wv, i, rv: {"loss": b.sum(b.mul(b.gather(wv, i), rv))})
    g.loss = "loss"
    c = compile_graph(gradient_graph(bind(g, {}, "f64")), threads=1)
    assert any(k.kind is KernelKind.SCATTER for k in c.schedule.kernels)  # a scatter-add, no one-hot matmul
    got = c.step.run(W=w, i=idx, r=r)["d.W"]
    f = lambda wp: np.sum(wp[idx] * r)
    num = np.zeros_like(w)
    for k in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[k] += 1e-6
        down[k] -= 1e-6
        num[k] = (f(up) - f(down)) / 2e-6
    np.testing.assert_allclose(got, num, rtol=1e-7, atol=1e-8)
    assert not got[2].any()


def scale_graph():
    g = graph({"x": TensorType("f32", (3, 5)), "r": TensorType("f32", (3, 5))},
              lambda b, x, r: {"loss": b.sum(b.mul(b.extern_call(b.add(x, 1.0), slot="scale"), r))})
    g.inputs[1].nograd = True
    g.loss = "loss"
    return g


def test_extern_call_runs_a_bound_callback_inside_the_one_native_call():
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    r = np.full((3, 5), 0.5, np.float32)
    step = compile_graph(gradient_graph(bind(scale_graph(), {}, "f32")), threads=2).step
    assert step.extern_slots == ("scale",)
    with pytest.raises(RuntimeError, match="extern_call slot scale has no function"):
        step.run(x=x, r=r)
    native, inside, seen = step._fn, [], []
    step._fn = lambda table: (inside.append(True), native(table), inside.pop())
    step.bind_extern("scale", lambda values: (seen.append((values.dtype, values.size, bool(inside))),
                                              values.__imul__(3.0)))
    out = step.run(x=x, r=r)
    assert seen == [(np.float32, 15, True)]  # called once, during the step's native call
    np.testing.assert_allclose(out["loss"], np.sum(3 * (x + 1) * r), rtol=1e-6)
    np.testing.assert_array_equal(out["d.x"], r)  # the gradient passes straight through the callee


def test_extern_call_takes_a_c_function_address_and_its_user_pointer_and_reraises_a_callback_error():
    step = compile_graph(bind(scale_graph(), {}, "f64"), threads=1).step
    calls = ctypes.c_int64(0)

    @EXTERN
    def negate(user, data, count, dtype):
        assert dtype == 1  # f64
        ctypes.c_int64.from_address(user).value += 1
        values = (ctypes.c_double * count).from_address(data)
        for j in range(count):
            values[j] = -values[j]

    step.bind_extern("scale", ctypes.cast(negate, ctypes.c_void_p).value, ctypes.addressof(calls))
    x, r = np.ones((3, 5)), np.ones((3, 5))
    assert step.run(x=x, r=r)["loss"] == -30.0
    assert calls.value == 1
    step.bind_extern("scale", lambda values: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        step.run(x=x, r=r)
