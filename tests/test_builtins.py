"""The built-in layers dropout, batch_norm and layer_norm, and the training vs evaluation forms of a
model: masks drawn in generated code, gradients against numerical ones, running statistics, and eval
after training and after loading saved params. Shapes are non-square."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.autodiff.lr_schedule import COUNTER
from graphc.cli import main
from graphc.driver import compile_graph, forward
from graphc.errors import GraphcError
from graphc.frontend import load_source
from graphc.ir.graph import Builder, Graph, Input, TensorType, Value
from graphc.ops import REGISTRY
from graphc.runtime.train.gradcheck import gradcheck
from graphc.ir.init import init_params

EPS = 1e-5


def dropout_step(shape, p, seed, dtype="f32", threads=1):
    g = Graph("drop")
    x, step = Value("x", TensorType(dtype, shape)), Value("step", TensorType(dtype, ()))
    g.inputs = [Input(x), Input(step, nograd=True)]
    g.outputs = {"y": Builder(g).dropout(x, step, p=p, seed=seed)}
    g.loss = "y"
    return compile_graph(g, threads=threads).step


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_dropout_masks_rate_reproducibility_and_ref(dtype):
    p, shape = 0.3, (300, 257)  # large enough that the loop is split across threads
    npt = np.float32 if dtype == "f32" else np.float64
    x = np.random.default_rng(0).uniform(1.0, 2.0, shape).astype(npt)  # never 0: a 0 out is dropped
    one, two = dropout_step(shape, p, 11, dtype), dropout_step(shape, p, 11, dtype, threads=2)
    masks = {}
    for step in (0, 1, 2):
        y = one(x=x, step=step)["y"].copy()
        masks[step] = y == 0
        assert abs(masks[step].mean() - p) < 0.01
        np.testing.assert_array_equal(y[~masks[step]], x[~masks[step]] * npt(1 / (1 - p)))
        # bit for bit: the NumPy reference runs the same hash; the split loop draws the same mask
        np.testing.assert_array_equal(y, REGISTRY["dropout"].ref(x, npt(step), p=p, seed=11))
        np.testing.assert_array_equal(two(x=x, step=step)["y"], y)
    np.testing.assert_array_equal(one(x=x, step=1)["y"] == 0, masks[1])  # same seed and step
    for a, b in ((0, 1), (1, 2)):  # other steps: independent masks, agreeing at p^2 + (1-p)^2
        assert abs((masks[a] == masks[b]).mean() - (p * p + (1 - p) ** 2)) < 0.01
    other_seed = dropout_step(shape, p, 12, dtype)(x=x, step=1)["y"] == 0
    assert abs((other_seed == masks[1]).mean() - (p * p + (1 - p) ** 2)) < 0.01


MLP = """
dim B
input x : f32[B, 7]
input y : i32[B] nograd
param W : f32[7, 5] = normal(std=0.5)
h = dropout(batch_norm(x @ W) as bn, p=0.3)
loss = softmax_cross_entropy(h, y)
"""

CONV = """
dim B
input x : f32[B, 3, 5, 2]
input r : f32[B, 3, 5, 2] nograd
h = batch_norm(x * x + x) as bn
output loss = sum(dropout(h, p=0.25) * r)
"""


@pytest.mark.parametrize("src", [MLP, CONV], ids=["2d", "4d"])
def test_gradients_in_training_form_match_numerical(src):
    report = gradcheck(load_source(src), batch=4)
    assert {r["name"] for r in report["params"]} >= {"bn.gamma", "bn.beta"}
    assert report["ok"], report


def bn_source(shape: str) -> str:
    return f"dim B\ninput x : f32[B, {shape}]\noutput z = batch_norm(x, momentum=0.25) as bn\n"


def channel_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    col = (1, -1) + (1,) * (x.ndim - 2)
    return axes, col


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 2)])
def test_eval_form_normalizes_with_running_statistics(shape):
    prog = load_source(bn_source(", ".join(map(str, shape[1:]))))
    rng = np.random.default_rng(1)
    c = shape[1]
    arrays = {"bn.gamma": rng.normal(size=c), "bn.beta": rng.normal(size=c),
              "bn.running_mean": rng.normal(size=c), "bn.running_var": rng.uniform(0.5, 2, c)}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    before = {k: v.copy() for k, v in arrays.items()}
    step = compile_graph(forward(prog, shape[0], training=False), arrays).step
    x = rng.normal(size=shape).astype(np.float32)
    z = step(x=x)["z"]
    _, col = channel_stats(x)
    m, v, gamma, beta = (arrays[f"bn.{k}"].reshape(col)
                         for k in ("running_mean", "running_var", "gamma", "beta"))
    np.testing.assert_allclose(z, (x - m) / np.sqrt(v + EPS) * gamma + beta, rtol=1e-5, atol=1e-5)
    for k in arrays:  # evaluation reads the statistics, never updates them
        np.testing.assert_array_equal(arrays[k], before[k])


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 2)])
def test_training_form_uses_batch_statistics_and_updates_running_ones(shape):
    prog = load_source(bn_source(", ".join(map(str, shape[1:]))))
    g = forward(prog, shape[0])
    step = compile_graph(g, init_params(g.params, 0)).step  # state starts at its initializers
    rng = np.random.default_rng(2)
    mean, var = np.zeros(shape[1]), np.ones(shape[1])
    for _ in range(2):
        x = rng.normal(2.0, 3.0, shape).astype(np.float32)
        z = step(x=x)["z"]
        axes, col = channel_stats(x)
        mu, sigma2 = x.mean(axis=axes), x.var(axis=axes)
        np.testing.assert_allclose(z, (x - mu.reshape(col)) / np.sqrt(sigma2.reshape(col) + EPS),
                                   rtol=1e-4, atol=1e-4)
        n = x.size // shape[1]
        mean = 0.75 * mean + 0.25 * mu
        var = 0.75 * var + 0.25 * sigma2 * n / (n - 1)  # unbiased, as PyTorch keeps it
        np.testing.assert_allclose(step.state["bn.running_mean"], mean, rtol=1e-5)
        np.testing.assert_allclose(step.state["bn.running_var"], var, rtol=1e-5)


LAYER_NORM = """
dim B
input x : f32[B, 3, 5]
input r : f32[B, 3, 5] nograd
h = layer_norm(x * x + x) as ln1
output loss = sum(h * r)
"""


def test_layer_norm_normalizes_the_last_axis_alike_in_both_forms():
    prog = load_source("dim B\ninput x : f32[B, 3, 5]\noutput z = layer_norm(x, eps=1e-3) as ln1\n")
    assert [(p.value.name, p.init, p.value.shape) for p in prog.graph.params] == [
        ("ln1.gamma", "ones", (5,)), ("ln1.beta", "zeros", (5,))]
    assert not prog.graph.state and not prog.graph.updates
    rng = np.random.default_rng(4)
    arrays = {"ln1.gamma": rng.normal(size=5).astype(np.float32), "ln1.beta": rng.normal(size=5).astype(np.float32)}
    x = rng.normal(2.0, 3.0, (2, 3, 5)).astype(np.float32)
    mu, sigma2 = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)  # biased, as PyTorch
    want = (x - mu) / np.sqrt(sigma2 + 1e-3) * arrays["ln1.gamma"] + arrays["ln1.beta"]
    for training in (True, False):
        z = compile_graph(forward(prog, 2, training=training), arrays).step(x=x)["z"]
        np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)


def test_layer_norm_gradients_match_numerical():
    report = gradcheck(load_source(LAYER_NORM), batch=2)
    assert {r["name"] for r in report["params"]} == {"ln1.gamma", "ln1.beta", "x"}  # x: an input
    assert report["ok"], report


def test_forms_differ_only_where_the_builtins_do():
    prog = load_source(MLP)
    train_ops = [n.op for n in prog.graph.nodes]
    eval_ops = [n.op for n in prog.eval_graph.nodes]
    assert "dropout" in train_ops and "dropout" not in eval_ops and "mean" not in eval_ops
    assert {t.name for t, _ in prog.graph.updates} == {"bn.running_mean", "bn.running_var", COUNTER}
    assert prog.eval_graph.updates == []
    same = lambda g: [(p.value.name, p.init) for p in g.params]
    assert same(prog.graph) == same(prog.eval_graph) == [
        ("W", "normal"), ("bn.gamma", "ones"), ("bn.beta", "zeros")]
    assert [s.value.name for s in prog.eval_graph.state] == ["bn.running_mean", "bn.running_var"]


def test_step_counter_advances_once_per_training_step():
    prog = load_source(MLP)
    step = compile_graph(forward(prog, 4), init_params(prog.graph.params, 0)).step
    x, y = np.ones((4, 7), np.float32), np.zeros(4, np.int32)
    counts = []
    for _ in range(3):
        step(x=x, y=y)
        counts.append(float(step.state[COUNTER]))
    assert counts == [1.0, 2.0, 3.0]


DIGITS = """
net digits_bn
dim B
input x : f32[B, 64] = pixels(16)
input y : i32[B] nograd
layer dense(h: f32[B, I], units: int) -> f32[B, units] {
  param W : f32[I, units] = he_normal()
  param b : f32[units] = zeros()
  return h @ W + b
}
h = dropout(relu(batch_norm(dense(x, units=48) as fc1)), 0.2)
logits = dense(h, units=10) as out
loss = softmax_cross_entropy(logits, y)
metric accuracy = accuracy(logits, y)
train { optimizer = sgd(lr=0.1, momentum=0.9)  batch = 32  epochs = 6  seed = 0  data = digits }
"""


def test_train_then_eval_saved_params_gives_the_reported_accuracy(tmp_path, capsys):
    model = tmp_path / "digits_bn.net"
    model.write_text(DIGITS)
    assert main(["train", str(model), "--no-progress", "--out", str(tmp_path / "run")]) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    acc = float(final.split("test_accuracy ")[1])
    assert acc >= 0.97
    params = tmp_path / "run" / "params.npz"
    assert "batch_norm0.running_var" in np.load(params).files
    assert main(["eval", str(model), "--params", str(params)]) == 0
    assert capsys.readouterr().out.split() == final.split()[1:]  # test_loss, test_accuracy


def test_ir_prints_the_eval_form(capsys):
    assert main(["ir", "models/mlp_bn.net", "--eval"]) == 0
    text = capsys.readouterr().out
    assert "dropout" not in text and "fc1.bn.running_mean" in text and "<-" not in text
    assert main(["ir", "models/mlp_bn.net"]) == 0
    assert "fc1.bn.running_mean <- " in capsys.readouterr().out


@pytest.mark.parametrize("line,where,msg", [
    ("h = dropout(x, p=1.5)", "5:5", "dropout: p must be in [0, 1), got 1.5"),
    ("h = dropout(x, q=0.5)", "5:16", "dropout argument 'q' is unknown"),
    ("h = dropout(x, 0.5, p=0.5)", "5:21", "dropout argument 'p' is given twice"),
    ("h = dropout(x, p=x)", "5:18", "'x' is a tensor; attribute values must be constants"),
    ("h = batch_norm(x, momentum=2)", "5:5", "batch_norm: momentum must be in [0, 1], got 2.0"),
    ("h = batch_norm(sum(x, axes=1))", "5:5", "batch_norm takes a float tensor [N, C, ...]"),
    ("h = batch_norm()", "5:5", "batch_norm takes a tensor and up to 2 numbers, got 0"),
    ("h = layer_norm(x, eps=0)", "5:5", "layer_norm: eps must be positive, got 0.0"),
    ("h = layer_norm(sum(x))", "5:5", "layer_norm takes a float tensor [..., D] with a known feature count"),
    ("layer dropout(h: f32[B, 7]) {\n  return h\n}", "5:7",
     "'dropout' is already defined (a built-in)"),
])
def test_builtin_errors_are_positioned(line, where, msg):
    src = "dim B\ninput x : f32[B, 7]\ninput y : i32[B] nograd\n\n" + line + "\noutput o = x\n"
    with pytest.raises(GraphcError) as e:
        load_source(src, "m.net")
    assert f"m.net:{where}: error: {msg}" in str(e.value)
