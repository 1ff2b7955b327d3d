"""Row kernels: layer norm, softmax and cross-entropy fused a row at a time (passes/fuse.py's ROWS
kernels), against NumPy in float64, at one thread and two, and differentiated."""

from __future__ import annotations

import numpy as np
import pytest

from graphc import driver
from graphc.autodiff.graphs import inference_graph
from graphc.frontend import load_source
from graphc.ir.init import init_params
from graphc.runtime.train.gradcheck import gradcheck

# rows of 37 (no whole vector) over a [5, 3] batch of rows; a causal mask as gpt.net writes it
SOURCE = """
net rows
dim B
input x : f32[B, 3, 37]
input r : f32[B, 3, 37] nograd
param w : f32[37] = normal(std=0.5)
s = x * w
future = gt(iota(s, axis=2), iota(s, axis=1) * 12.0)
p = softmax(where(future, -1e9, s), axis=-1)
h = layer_norm(x + p) as ln
output y = h
output q = log_softmax(h * r, axis=-1)
loss = sum(y * r) + sum(q)
"""


def reference(x, r, w, gamma, beta):
    x, r = x.astype(np.float64), r.astype(np.float64)
    s = x * w
    t = np.arange(s.shape[2])[None, None, :] > np.arange(s.shape[1])[None, :, None] * 12.0
    s = np.where(t, -1e9, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    z = x + p
    mu = z.mean(-1, keepdims=True)
    h = (z - mu) / np.sqrt(((z - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * gamma + beta
    a = h * r
    q = a - a.max(-1, keepdims=True)
    return h, q - np.log(np.exp(q).sum(-1, keepdims=True))


def test_layer_norm_softmax_and_log_softmax_are_row_kernels_that_match_numpy():
    """Softmax, layer norm and log-softmax over the same rows are one kernel, which stores only what
    others read (here the two outputs); one thread and two give the same bits."""
    prog = load_source(SOURCE, "rows.net")
    g = inference_graph(driver.forward(prog, 5))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 37), dtype=np.float32)
    r = rng.standard_normal((5, 3, 37), dtype=np.float32)
    x[4, 2, 5] = np.nan  # its row is NaN throughout, and no other
    params = init_params(g.params, 0)
    params["ln.gamma"][:] = rng.uniform(0.5, 1.5, 37)
    params["ln.beta"][:] = rng.uniform(-0.5, 0.5, 37)
    outs = []
    for threads in (1, 2):
        c = driver.compile_graph(g, {k: v.copy() for k, v in params.items()}, threads=threads)
        (k,) = c.schedule.kernels
        assert k.kind.value == "rows" and len(k.outputs) == 2  # y and q
        out = c.step(x=x, r=r)
        outs.append({k: v.copy() for k, v in out.items()})
    for k in outs[0]:
        np.testing.assert_array_equal(outs[1][k], outs[0][k], err_msg=k)
    h, q = reference(x, r, params["w"], params["ln.gamma"], params["ln.beta"])
    assert np.isnan(outs[0]["y"][4, 2]).all() and np.isnan(outs[0]["q"][4, 2]).all()
    assert not np.isnan(np.delete(outs[0]["y"].reshape(15, 37), 14, axis=0)).any()
    np.testing.assert_allclose(outs[0]["y"], h, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(outs[0]["q"], q, rtol=2e-5, atol=2e-5)


def test_row_kernels_in_the_training_step_keep_gradients_exact():
    """The backward passes of log-softmax, layer norm and softmax (to w) join the forward's row
    kernel: all but the sums over the batch (the losses, the params' gradients) is one kernel. The
    gradients match central differences in float64 (random cotangents r, and the constant one of
    sum(q))."""
    report = gradcheck(load_source(SOURCE, "rows.net"), batch=2)
    assert report["ok"] and {p["name"] for p in report["params"]} >= {"w", "ln.gamma", "ln.beta"}, report
    g = driver.train_graph(load_source(SOURCE, "rows.net"), 4)
    kernels = driver.compile_graph(g, init_params(g.params, 0)).schedule.kernels
    (rows,) = [k for k in kernels if k.kind.value == "rows"]
    assert sum(n.op in ("sum", "max") for n in rows.nodes) >= 8
    assert all(k.kind.value != "elementwise" or len(k.space) < 3 for k in kernels)


@pytest.mark.parametrize("rows,length", [(64, 64), (300, 130)])
def test_a_row_kernel_keeps_values_a_later_pass_reads_in_a_row_buffer(rows, length):
    """softmax's exp is computed once a row: the pass that sums it leaves it in a row buffer for the
    pass that divides (the kernel's generated code holds one call-free exp per element per row)."""
    from graphc.codegen.kernels import _LoopNest
    prog = load_source(f"net sm\ninput x : f32[{rows}, {length}]\noutput p = softmax(x, axis=-1)\n"
                       "loss = sum(p)\n", "sm.net")
    c = driver.compile_graph(inference_graph(driver.forward(prog)))
    (k,) = c.schedule.kernels
    assert k.kind.value == "rows"
    from llvmlite import ir
    fn = ir.Function(ir.Module(), ir.FunctionType(ir.VoidType(), []), "f")
    nest = _LoopNest(fn, k, {}, None, False, None)
    exp = next(n for n in k.nodes if n.op == "exp")
    assert sum(exp in p.nodes for p in nest.passes) == 1 and any(exp.out in p.writes for p in nest.passes)
    x = np.random.default_rng(1).standard_normal((rows, length), dtype=np.float32) * 30
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(c.step(x=x)["p"], e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
