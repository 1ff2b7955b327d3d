"""scan: recurrence as a loop over a body graph. Its forward against the NumPy reference, its
gradients (a reverse scan) against float64 numerical differences, its compiled size independent of
the sequence length, its IR forms and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from graphc import driver
from graphc.api import Model
from graphc.autodiff.graphs import gradient_graph
from graphc.codegen.module import build_module
from graphc.codegen.target import host_target
from graphc.errors import GraphcError
from graphc.frontend import load_source as loads
from graphc.ir.bind import bind
from graphc.ir.init import init_params
from graphc.ir.parse_text import parse_text
from graphc.ir.printer import print_graph
from graphc.ir.serialize import dumps, loads as json_loads
from graphc.ops.reference import evaluate
from graphc.passes.pipeline import schedule
from graphc.runtime.train.gradcheck import check_graph

RNN = """
net rnn
dim B
input x : f32[B, {T}, 3]
input y : i32[B] nograd

layer cell(x: f32[B, E], h: f32[B, H]) -> f32[B, H] {{
  param Wx : f32[E, H] = xavier_uniform()
  param Wh : f32[H, H] = orthogonal()
  param b : f32[H] = normal(std=0.1)
  return tanh(x @ Wx + h @ Wh + b)
}}

param W0 : f32[3, 4] = normal()
init = tanh(sum(x, axes=1) @ W0)
hs = scan(cell, transpose(x, perm=[1, 0, 2]), init) as rnn
last = reshape(slice(hs, axis=0, start={T} - 1, stop={T}), shape=[B, 4])
loss = {LOSS}
"""

# an LSTM cell written from primitives, its carry [h, c] side by side
LSTM = """
net lstm
dim B
input x : i32[B, {T}] nograd
input y : i32[B, {T}] nograd

layer lstm_cell(gx: f32[B, G], s: f32[B, S], hidden: int) -> f32[B, S] {{
  param Wh : f32[hidden, G] = orthogonal()
  h = slice(s, axis=1, start=0, stop=hidden)
  c = slice(s, axis=1, start=hidden, stop=2 * hidden)
  z = gx + h @ Wh
  i = sigmoid(slice(z, axis=1, start=0, stop=hidden))
  f = sigmoid(slice(z, axis=1, start=hidden, stop=2 * hidden))
  g = tanh(slice(z, axis=1, start=2 * hidden, stop=3 * hidden))
  o = sigmoid(slice(z, axis=1, start=3 * hidden, stop=4 * hidden))
  c2 = f * c + i * g
  return concat(o * tanh(c2), c2, axis=1)
}}

param emb : f32[7, 2] = normal(std=0.5)
param Wx : f32[2, 12] = xavier_uniform()
param Wo : f32[3, 7] = xavier_uniform()
gx = transpose(gather(emb, x) @ Wx, perm=[1, 0, 2])
hs = scan(lstm_cell, gx, broadcast_to(0.0, shape=[B, 6]), hidden=3) as lstm
h = transpose(slice(hs, axis=2, start=0, stop=3), perm=[1, 0, 2])
loss = softmax_cross_entropy(h @ Wo, y)
"""


def _rnn(t: int = 5, loss: str = "softmax_cross_entropy(last, y) + mean(hs * hs)"):
    return loads(RNN.format(T=t, LOSS=loss), "rnn.net")


def _feeds(prog, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = driver.forward(prog, batch)
    out = {}
    for i in g.inputs:
        shape = i.value.dims
        out[i.value.name] = (rng.integers(0, 4 if i.value.name == "y" and len(shape) == 1 else 7, shape)
                             .astype(np.int32) if i.value.dtype == "i32" else rng.normal(size=shape))
    return out


@pytest.mark.parametrize("loss", ["softmax_cross_entropy(last, y) + mean(hs * hs)",  # a random cotangent
                                  "sum(hs)",                                          # a constant one
                                  "mean(last)"])                                      # only the last step
def test_rnn_gradients_match_numerical_differences(loss):
    prog = _rnn(loss=loss)
    fwd = driver.forward(prog, 2, "f64")
    params = {k: v.astype(np.float64) for k, v in init_params(fwd.params, 1).items()}
    feeds = _feeds(prog, 2)
    report = check_graph(fwd, params, feeds)
    assert report["ok"], report["params"]
    assert {r["name"] for r in report["params"]} == {"rnn.Wx", "rnn.Wh", "rnn.b", "W0", "x"}
    # the loss the loop computes is the NumPy reference's (the scan's ref runs its body per step)
    want = evaluate(fwd, [feeds["x"], feeds["y"], *(params[p.value.name] for p in fwd.params)])[0]
    assert report["loss"] == pytest.approx(float(want), rel=1e-12)


def test_lstm_gradients_through_time():
    prog = loads(LSTM.format(T=4), "lstm.net")
    fwd = driver.forward(prog, 2, "f64")
    params = {k: v.astype(np.float64) for k, v in init_params(fwd.params, 3).items()}
    report = check_graph(fwd, params, _feeds(prog, 2, seed=1))
    assert report["ok"], report["params"]
    assert {r["name"] for r in report["params"]} == {"lstm.Wh", "emb", "Wx", "Wo"}


def test_threads_compute_what_one_thread_does():
    prog = loads(LSTM.format(T=6), "lstm.net")
    g = gradient_graph(driver.forward(prog, 5))
    params = init_params(g.params, 0)
    feeds = _feeds(prog, 5)
    one = driver.compile_graph(g, params, threads=1).step(**feeds)
    two = driver.compile_graph(g, params, threads=2).step(**feeds)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_compiled_size_does_not_grow_with_the_sequence():
    """The body is compiled once: 8 steps, 256 or 2048 make the same kernels and the same code, but
    for the GEMMs over all steps (weight gradients) that sum K in blocks once K is long (a few lines
    each, whatever the length)."""
    kernels, lines = [], []
    for t in (8, 256, 2048):
        s = schedule(gradient_graph(driver.forward(_rnn(t), 2)))
        kernels.append(len(s.every_kernel()))
        lines.append(len(str(build_module(s, host_target())).splitlines()))
    assert kernels[0] == kernels[1] == kernels[2]
    assert max(lines) - min(lines) < 0.05 * min(lines), lines  # 256 times the steps


def test_ir_shows_the_loop_and_its_reverse():
    prog = _rnn()
    text = print_graph(driver.forward(prog, 2))
    assert "scan" in text and "body=@rnn.cell" in text and "graph rnn.cell(carry: f32[2,4], x: f32[2,3]" in text
    grad_text = print_graph(gradient_graph(driver.forward(prog, 2)))
    assert "graph rnn.cell.vjp(" in grad_text and "reverse=true" in grad_text


def test_text_ir_reads_back_with_its_bodies():
    for g in (driver.forward(_rnn(), 2), gradient_graph(driver.forward(_rnn(), 2))):
        text = print_graph(g)
        assert print_graph(parse_text(text)) == text


def test_json_round_trip_keeps_the_body():
    g = gradient_graph(driver.forward(_rnn(), 2))
    back = json_loads(dumps(g))
    assert print_graph(back) == print_graph(g)
    assert json.loads(dumps(g))["nodes"]


@pytest.mark.parametrize("call, message", [
    ("scan(tanh, xs, init)", "scan's cell must be a layer of this file"),
    ("scan(cell, xs)", "scan takes a cell layer, a sequence and an initial carry, got 2"),
    ("scan(cell, xs, sum(init, axes=1))", "cell expects h: f32[B, H]"),
    ("scan(bad, xs, init)", "scan's cell must return its carry's type f32[B,4], got f32[B,3]"),
])
def test_errors_point_at_the_call(call, message):
    src = f"""dim B
input x : f32[B, 5, 3]
layer cell(x: f32[B, E], h: f32[B, H]) -> f32[B, H] {{
  param W : f32[E, H] = normal()
  return tanh(x @ W + h)
}}
layer bad(x: f32[B, E], h: f32[B, H]) {{
  return x
}}
xs = transpose(x, perm=[1, 0, 2])
init = sum(x, axes=1) @ broadcast_to(0.0, shape=[3, 4])
loss = sum({call})
"""
    with pytest.raises(GraphcError) as e:
        bind(driver.forward(loads(src, "m.net"), 2), {})
    assert message in str(e.value)
    assert e.value.loc is not None and e.value.loc.line == 12


def test_256_steps_train():
    """An LSTM over 256 steps compiles and trains: the loss falls on a repeated batch."""
    m = Model(loads(LSTM.format(T=256), "lstm.net"), batch=2, seed=0)
    feeds = _feeds(loads(LSTM.format(T=256), "lstm.net"), 2)
    losses = [m.step(lr=0.5, **feeds)["loss"] for _ in range(5)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
