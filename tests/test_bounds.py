"""`--check-bounds` builds: every loop-kernel access is checked; shipped models and random shapes
run clean and give the same results as the normal build, and a kernel that indexes outside its
buffer is caught."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from graphc import driver
from graphc.cli import main
from graphc.autodiff.graphs import gradient_graph
from graphc.ir.bind import bind
from graphc.ir.graph import TensorType
from graphc.ops import REGISTRY
from graphc.ops.lowering import Elementwise
from graphc.ir.init import init_params
from graphc.runtime.execute.step import BoundsError
from test_ops import ALL, build, feeds_for, ref, run

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it


@pytest.mark.parametrize("model,batch", [("mlp", 3), ("lenet", 2), ("lcn", 2), ("cnn_bn", 2),
                                         ("mlp_bn", 5), ("digits", 7), ("apples", None)])
def test_models_run_clean_and_agree(model, batch):
    prog = driver.load(f"models/{model}.net")
    g = driver.train_graph(prog, batch) if prog.graph.loss and batch else driver.forward(prog, batch)
    rng = np.random.default_rng(1)
    feeds = {i.value.name: (rng.integers(0, 2, i.value.shape) if i.value.dtype == "i32"
                            else rng.random(i.value.shape)) for i in g.inputs}
    outs = []
    for check in (False, True):
        step = driver.compile_graph(g, init_params(g.params, 0), threads=1, check_bounds=check).step
        outs.append({k: np.array(v) for k, v in step.run(**feeds).items()})
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)


# every registered op on its non-square test shapes, gradient included
@pytest.mark.parametrize("name,i,case", ALL[::5], ids=[f"{n}-{i}" for n, i, _ in ALL[::5]])
def test_ops_run_clean(name, i, case):
    types, attrs = case
    xs, r = feeds_for(name, types, attrs)
    g = bind(build(name, types, attrs), {}, "f64")
    if REGISTRY[name].vjp is not None:
        g = gradient_graph(g)
    run(driver.compile_graph(g, check_bounds=True).step, **{f"x{j}": x for j, x in enumerate(xs)}, r=r)


def test_an_access_outside_a_buffer_is_caught(monkeypatch):
    # a deliberately wrong index map: read x[3,5] as if its axes were swapped (offsets up to 22)
    bad = dataclasses.replace(REGISTRY["neg"], lowering=Elementwise(REGISTRY["neg"].lowering.expr,
                                                                 lambda ts, out, attrs: [(1, 0)]))
    monkeypatch.setitem(REGISTRY, "neg", bad)
    g = bind(build("neg", (TensorType("f32", (3, 5)),), {}), {}, "f32")
    with pytest.raises(BoundsError, match="neg"):
        driver.compile_graph(g, check_bounds=True, use_cache=False).step(x0=np.ones((3, 5)), r=np.ones((3, 5)))


def test_cli_flag(capsys):
    assert main(["train", "models/digits.net", "--epochs", "1", "--check-bounds", "--no-progress"]) == 0
    assert "test_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_run_clean(seed):
    # random broadcasting and random convolution/pooling geometry, gradients included
    rng = np.random.default_rng(seed)
    n, c, co = (int(v) for v in rng.integers(1, 4, 3))
    k, s, p, d = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(d * (k - 1) + 1, 9, 2))
    cases = [("conv2d", (TensorType("f64", (n, c, h, w)), TensorType("f64", (co, c, k, k))),
              {"stride": s, "padding": p, "dilation": d}),
             ("max_pool2d", (TensorType("f64", (n, c, h, w)),), {"kernel": k, "stride": s, "padding": min(p, k // 2)}),
             ("avg_pool2d", (TensorType("f64", (n, c, h, w)),), {"kernel": k, "stride": s, "padding": min(p, k // 2)}),
             ("add", (TensorType("f64", (h, 1, w)), TensorType("f64", (c, 1))), {})]
    for name, types, attrs in cases:
        xs, r = feeds_for(name, types, attrs, seed)
        g = gradient_graph(bind(build(name, types, attrs), {}, "f64"))
        out = driver.compile_graph(g, check_bounds=True).step(**{f"x{j}": x for j, x in enumerate(xs)}, r=r)
        np.testing.assert_allclose(out["y"], ref(name, xs, attrs), rtol=1e-12, atol=1e-12, err_msg=name)
