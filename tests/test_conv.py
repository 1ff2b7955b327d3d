"""Convolution and pooling beyond the generated op tests: gathers over images large enough to have
both edges and a clean interior, max pooling's gradient at ties (and after relu, which pooling
moves behind), and the threads' K-split of conv weight gradients."""

from __future__ import annotations

import numpy as np

import pytest

from graphc import driver
from graphc.autodiff.graphs import gradient_graph
from graphc.codegen.kernels import loops
from graphc.ir.bind import bind
from graphc.ir.graph import Builder, Graph, Input, TensorType, Value
from graphc.ops import REGISTRY
from graphc.passes.pipeline import schedule
from graphc.ir.init import init_params


def _run_op(name: str, x: np.ndarray, **attrs) -> np.ndarray:
    g = Graph(name)
    v = Value("x", TensorType("f64", x.shape))
    g.inputs = [Input(v)]
    g.outputs = {"y": Builder(g).op(name, v, **attrs)}
    return np.array(driver.compile_graph(bind(g, {}, "f64")).step(x=x)["y"])


# (kernel, stride, padding, dilation): the innermost loop runs unchecked where every tap is inside
GEOMETRIES = [(3, 1, 0, 1), (5, 1, 2, 1), (3, 2, 1, 1), ((2, 3), (1, 2), (0, 2), (2, 1)), (4, 3, 3, 2)]


@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRIES)
def test_gathers_over_edges_and_interior_match_numpy(kernel, stride, padding, dilation):
    rng = np.random.default_rng(1)
    geo = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    x = rng.standard_normal((2, 3, 13, 17))
    win = _run_op("window", x, **geo, value=-0.5)
    np.testing.assert_array_equal(win, REGISTRY["window"].ref(x, **geo, value=-0.5))
    g = rng.standard_normal(win.shape)
    np.testing.assert_allclose(_run_op("fold", g, size=(13, 17), **geo),
                               REGISTRY["fold"].ref(g, size=(13, 17), **geo), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(_run_op("pad", x, axis=3, before=3, after=5, value=2.0),
                                  np.pad(x, ((0, 0),) * 3 + ((3, 5),), constant_values=2.0))


def _pool_graph(x: np.ndarray, relu_first: bool = False, **attrs) -> Graph:
    """The gradient graph of sum(r * max_pool2d(x)), r an input."""
    g = Graph("pool")
    b = Builder(g)
    v = Value("x", TensorType("f64", x.shape))
    g.inputs = [Input(v)]
    y = b.max_pool2d(b.relu(v) if relu_first else v, **attrs)
    r = Value("r", y.type)
    g.inputs.append(Input(r, nograd=True))
    g.outputs = {"loss": b.sum(b.mul(y, r))}
    g.loss = "loss"
    gg = gradient_graph(bind(g, {}, "f64"))
    if relu_first:  # reordered: pooling first, then relu on the pooled values
        assert [n.op for n in gg.nodes][:2] == ["max_pool2d", "relu"]
    return gg


def _pool_grad(x: np.ndarray, relu_first: bool = False, **attrs) -> np.ndarray:
    gg = _pool_graph(x, relu_first, **attrs)
    r = gg.inputs[1].value
    upstream = np.arange(1.0, 1 + np.prod(r.shape)).reshape(r.shape)  # distinct per patch
    return np.array(driver.compile_graph(gg).step(x=x, r=upstream)["d.x"])


def _first_max_grad(x: np.ndarray, kernel: int, stride: int, padding: int) -> np.ndarray:
    """NumPy: each patch sends its upstream gradient (1, 2, ... in patch order) to its first max."""
    n, c, h, w = x.shape
    p = padding
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    want = np.zeros_like(xp)
    oh, ow = (h + 2 * p - kernel) // stride + 1, (w + 2 * p - kernel) // stride + 1
    r = np.arange(1.0, 1 + n * c * oh * ow).reshape(n, c, oh, ow)
    for i in np.ndindex(n, c, oh, ow):
        patch = xp[i[0], i[1], stride * i[2]:stride * i[2] + kernel, stride * i[3]:stride * i[3] + kernel]
        a, bb = np.unravel_index(np.argmax(patch), patch.shape)
        want[i[0], i[1], stride * i[2] + a, stride * i[3] + bb] += r[i]
    return want[:, :, p:p + h, p:p + w]


def test_relu_then_max_pool_is_reordered_with_the_same_gradient():
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, (2, 3, 6, 8)).astype(np.float64)  # ties, zeros and all-negative patches
    dx = _pool_grad(x, relu_first=True, kernel=2)
    # NumPy: the gradient of sum(r * max_pool(relu(x))): each patch's g to the first max of relu(x)
    # there, times relu's derivative at that element
    want = np.zeros_like(x)
    r = np.arange(1.0, 1 + 2 * 3 * 3 * 4).reshape(2, 3, 3, 4)
    for i in np.ndindex(2, 3, 3, 4):
        patch = np.maximum(x[i[0], i[1], 2 * i[2]:2 * i[2] + 2, 2 * i[3]:2 * i[3] + 2], 0)
        a, c = np.unravel_index(np.argmax(patch), patch.shape)
        if x[i[0], i[1], 2 * i[2] + a, 2 * i[3] + c] > 0:
            want[i[0], i[1], 2 * i[2] + a, 2 * i[3] + c] = r[i]
    np.testing.assert_array_equal(dx, want)


def test_max_pool_gradient_goes_to_the_first_max_like_pytorch():
    x = np.zeros((1, 2, 4, 6))
    x[0, 1, 0:2, 2:4] = [[3.0, 5.0], [5.0, 1.0]]      # a tie at 5 in one patch: the first (row-major) wins
    dx = _pool_grad(x, kernel=2)
    r = np.arange(1.0, 13.0).reshape(1, 2, 2, 3)       # the upstream gradient of each patch
    want = np.zeros_like(x)
    want[0, :, 0::2, 0::2] = r                         # all-zero patches: their first element
    want[0, 1, 0, 2] = 0.0
    want[0, 1, 0, 3] = r[0, 1, 0, 1]                   # the patch with the tie: its first 5
    np.testing.assert_array_equal(dx, want)


def test_overlapping_padded_patches_each_pick_one_max():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 3, 7, 5)).astype(np.float64)  # many ties
    np.testing.assert_array_equal(_pool_grad(x, kernel=3, stride=2, padding=1),
                                  _first_max_grad(x, kernel=3, stride=2, padding=1))


@pytest.mark.parametrize("width", [38, 10])
def test_pool_windows_unrolled_into_vectorized_rows_match_numpy(width):
    # 2x2 windows tiling the image: the window's loops are unrolled into the row of pooled pixels
    # (19: vector iterations and a remainder; 5: shorter than a vector), forward and backward
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (2, 3, 6, width)).astype(np.float64)  # ties
    gg = _pool_graph(x, kernel=2)
    unrolled = {(k.kind.value, loops(k).unrolled) for k in schedule(gg).kernels
                if any(n.op in ("max", "eq") for n in k.nodes) and k.space[-1] == 2}
    assert unrolled == {("reduce", 2), ("elementwise", 1)}  # the maxima, the gradient's scatter
    np.testing.assert_array_equal(_pool_grad(x, kernel=2), _first_max_grad(x, kernel=2, stride=2, padding=0))


@pytest.mark.slow
def test_conv_weight_gradient_split_over_k_matches_one_thread():
    prog = driver.load("models/lenet.net")
    g = driver.train_graph(prog, 64)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((64, 784), dtype=np.float32), "y": rng.integers(0, 10, 64).astype(np.int32),
             "lr": 0.05}
    params = []
    for threads in (1, 2):
        p = init_params(g.params, 0)
        step = driver.compile_graph(g, p, threads=threads).step
        for _ in range(2):
            step(**feeds)
        params.append(p)
    for name in params[0]:  # conv1's 6x25 weight gradient sums 50176 products in two halves
        np.testing.assert_allclose(params[0][name], params[1][name], rtol=1e-5, atol=1e-6, err_msg=name)


KINKY = """net kinky
dim B
input x : f32[B, 784] = pixels(255)
input y : i32[B] nograd
param W1 : f32[3, 1, 5, 5] = he_normal()
param b1 : f32[3, 1, 1] = zeros()
h = max_pool2d(relu(conv2d(reshape(x, shape=[B, 1, 28, 28]), W1, padding=2) + b1), kernel=4)
param W : f32[147, 10] = xavier_uniform()
loss = softmax_cross_entropy(flatten(h) @ W, y)
train { batch = 2  data = mnist }
"""


def test_gradient_check_leaves_out_kinks(tmp_path):
    # real digits on a zero-bias relu: background pixels sit exactly at relu's kink, where the
    # central difference is no derivative; those elements are counted and left out, the rest agree
    from graphc.frontend import load
    from graphc.runtime.train.gradcheck import gradcheck
    path = tmp_path / "kinky.net"
    path.write_text(KINKY)
    r = gradcheck(load(path))
    kinks = {row["name"]: row["kinks"] for row in r["params"]}
    assert r["ok"], r
    assert kinks["b1"] == 3 and kinks["x"] > 0 and kinks["W1"] == 0
