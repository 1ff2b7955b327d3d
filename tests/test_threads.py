"""The worker pool: a step split across threads computes exactly what one thread computes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.ir.init import init_params

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent


# mlp: GEMMs split by columns (37: uneven shares); twolayer at 128: its 50-wide GEMMs split by rows,
# including X^T dY with a transposed A; lenet: its convolutions' weight gradients split K in blocks
@pytest.mark.parametrize("model,batch", [("mlp", 128), ("mlp", 37), ("twolayer", 128), ("lenet", 64)])
def test_two_threads_match_one_bit_for_bit(model, batch):
    prog = driver.load(ROOT / f"models/{model}.net")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    results = []
    for threads in (1, 2):
        g = driver.train_graph(prog, batch)
        params = init_params(g.params, 0)
        step = driver.compile_graph(g, params, threads=threads).step
        losses = [float(step(x=x, y=y, lr=0.05)["loss"]) for _ in range(3)]
        results.append((losses, params))
    (l1, p1), (l2, p2) = results
    assert l1 == l2 and l1[2] < l1[0]
    for name in p1:
        np.testing.assert_array_equal(p1[name], p2[name], err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
def test_feeder_picks_rows_like_take(threads):
    """A Feeder fills the inputs with the rows an index picks, in one native call: float rows copied,
    byte rows converted to float32(byte) / divisor exactly as data.py converts them, labels
    copied; a large batch (x, 116 KB) split across the pool in uneven shares, a small one (the
    labels alone) on the calling thread. Indices out of range and mismatched rows are refused."""
    prog = driver.load(ROOT / "models/twolayer.net")
    g = driver.train_graph(prog, 37)
    step = driver.compile_graph(g, init_params(g.params, 0), threads=threads).step
    rng = np.random.default_rng(1)
    rows = rng.random((501, 784), dtype=np.float32)
    raw = rng.integers(0, 256, (501, 784)).astype(np.uint8)
    labels = rng.integers(0, 10, 501).astype(step.inputs["y"].dtype)
    idx = rng.permutation(501)[:37]
    step.feeder(x=rows, y=labels)(idx)
    np.testing.assert_array_equal(step.inputs["x"], rows[idx])
    np.testing.assert_array_equal(step.inputs["y"], labels[idx])
    feed = step.feeder(x=(raw, 255.0), y=labels)
    feed(idx[::-1])
    np.testing.assert_array_equal(step.inputs["x"], raw[idx[::-1]].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(step.inputs["y"], labels[idx[::-1]])
    for bad in (np.full(37, 501), np.full(37, -1)):
        with pytest.raises(IndexError, match="501 rows"):
            feed(bad)
    feed(idx)  # a refused batch leaves nothing behind
    np.testing.assert_array_equal(step.inputs["x"], raw[idx].astype(np.float32) / np.float32(255))
    labels_only = step.feeder(y=labels)
    labels_only(np.roll(idx, 1))
    np.testing.assert_array_equal(step.inputs["y"], labels[np.roll(idx, 1)])
    with pytest.raises(IndexError, match="takes 37 row indices"):
        labels_only(idx[:5])
    with pytest.raises(ValueError, match="C-contiguous float32"):
        step.feeder(x=rows.astype(np.float64))
    with pytest.raises(ValueError, match="divisor 3"):
        step.feeder(x=(rows, 3.0))
    with pytest.raises(ValueError, match="no input z"):
        step.feeder(z=rows)


# each tuning graphc has (CPU name, vector bits), whatever the host
TUNINGS = [("znver4", 512), ("znver5", 512), ("rocketlake", 512), ("x86-64-v3", 256), ("x86-64", 128)]

KSPLIT_NET = """
net ksplit
dim B
input x : f32[B, {width}]
input y : i32[B] nograd
layer dense(h: f32[B, I], units: int, act: fn = relu) -> f32[B, units] {{
  param W : f32[I, units] = he_normal()
  param b : f32[units]    = zeros()
  return act(h @ W + b)
}}
h      = dense(x, units={units}) as fc
logits = dense(h, units=10, act=id) as out
loss   = softmax_cross_entropy(logits, y)
train {{ optimizer = sgd(lr=0.1, momentum=0.9)  batch = 8  epochs = 1  seed = 0  data = mnist }}
"""


# K split in blocks: x·W of an 8x12 C over K = 4096 (too small for shares of C), with its epilogue
# on the summed C; fc's weight gradient xᵀ·dY, a 96x80 C over the K = 1024 rows of the batch (each
# share of C would pack all of x)
@pytest.mark.parametrize("batch,width,units,split", [(8, 4096, 12, (8, 12, 4096)), (1024, 96, 80, (96, 80, 1024))])
def test_gemm_epilogues_fuse_and_split(tmp_path, batch, width, units, split):
    """Bias and relu join the forward GEMM's kernel; the momentum update, which streams weights and
    velocities as large as C, stays a loop kernel, and so does relu's mask, gt(relu(x), 0), which
    reads only the stored relu: the backward loop that uses it computes it. Split across threads by rows, by
    columns (mlp.net), or by K (`split`: the GEMM's M, N and K; on every target's tuning), a
    step computes what one thread computes."""
    from graphc.codegen.module import _gemm, _k_blocks
    from graphc.codegen.target import Target, host_target
    from graphc.passes.pipeline import schedule
    ops = lambda k: [n.op for n in k.nodes]
    kernels = schedule(driver.train_graph(driver.load(ROOT / "models/mlp.net"), 128)).kernels
    contracts = [ops(k) for k in kernels if k.kind.value == "contract"]
    assert ["matmul", "add", "relu"] in contracts and all("sub" not in c and "gt" not in c for c in contracts)
    assert ["gt", "mul", "sum"] in [ops(k) for k in kernels if k.kind.value == "reduce"]
    (tmp_path / "ksplit.net").write_text(KSPLIT_NET.format(width=width, units=units))
    prog = driver.load(tmp_path / "ksplit.net")
    rng = np.random.default_rng(0)
    x = rng.random((batch, width), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    host = host_target()
    targets = [host] + [Target(host.triple, cpu, "", bits) for cpu, bits in TUNINGS]
    params = []
    for threads in (1, 2):
        g = driver.train_graph(prog, batch)
        p = init_params(g.params, 0)
        step = driver.compile_graph(g, p, threads=threads).step
        assert ops(step.schedule.kernels[0]) == ["matmul", "add", "relu"]
        gemms = [k.nodes[0] for k in step.schedule.kernels if k.kind.value == "contract"]
        shape = lambda n: (_gemm(n).m, _gemm(n).n, _gemm(n).k)
        assert all(_k_blocks(n, t) > 1 for n in gemms if shape(n) == split for t in targets)
        assert split in map(shape, gemms)
        losses = [float(step(x=x, y=y, lr=0.005)["loss"]) for _ in range(3)]
        params.append((losses, p))
    (l1, p1), (l2, p2) = params
    assert l1[2] < l1[0] and l1 == l2
    for name in p1:  # K blocks fixed whatever the threads: the same sums
        np.testing.assert_array_equal(p2[name], p1[name], err_msg=name)


@pytest.mark.parametrize("shape,units", [((2, 300, 40), 48), ((2, 3, 500), 300)])
def test_an_epilogue_over_folded_rows_splits_by_rows_or_columns(shape, units):
    """x @ W over x: [B, T, D] is one GEMM whose rows are B·T: its bias and tanh join it as an
    epilogue, one loop over those rows and one over the columns, which a thread's share restricts
    (by rows: 600 rows of 48 columns; by columns: 6 rows of 300). An operand that does not walk the
    rows as one ([B, 1, N]) stays out. One thread and two compute what NumPy does."""
    from graphc.autodiff.graphs import inference_graph
    from graphc.frontend import load_source
    dims = ", ".join(map(str, shape))
    b, t, d = shape
    prog = load_source(f"net folded\ninput x : f32[{dims}]\ninput g : f32[{b}, 1, {units}]\n"
                       f"param W : f32[{d}, {units}] = normal(std=0.1)\nparam c : f32[{units}] = normal(std=0.1)\n"
                       f"h = tanh(x @ W + c)\noutput y = h * g\nloss = mean(y)\n", "folded.net")
    g = inference_graph(driver.forward(prog))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    gate = rng.standard_normal((b, 1, units), dtype=np.float32)
    outs = []
    for threads in (1, 2):
        params = init_params(g.params, 0)
        c = driver.compile_graph(g, params, threads=threads)
        assert [[n.op for n in k.nodes] for k in c.schedule.kernels] == [["matmul", "add", "tanh"], ["mul"]]
        outs.append(c.step(x=x, g=gate)["y"].copy())
    np.testing.assert_array_equal(outs[1], outs[0])
    ref = np.tanh(x.astype(np.float64) @ params["W"] + params["c"]) * gate
    np.testing.assert_allclose(outs[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("shape,axes", [((300, 70), "0"), ((6, 50, 96), "[0, 1]"), ((37, 5), "0")])
def test_a_column_sum_sums_blocks_of_rows_and_matches_one_thread(shape, axes, reduce):
    """A sum whose innermost axis is kept (a bias gradient) has no kept loop outside to split: its
    rows are summed in blocks (uneven at 300 and 37 rows), each into a partial row, and the
    partials combined in block order, so threads take whole blocks and the bits are one thread's."""
    from graphc.autodiff.graphs import inference_graph
    from graphc.codegen.kernels import loops
    from graphc.codegen.module import _worth_splitting
    from graphc.codegen.target import Target, host_target
    from graphc.frontend import load_source
    host = host_target()
    targets = [host] + [Target(host.triple, cpu, "", bits) for cpu, bits in TUNINGS]
    dims = ", ".join(map(str, shape))
    prog = load_source(f"net colsum\ninput x : f32[{dims}]\ninput y : f32[{dims}]\n"
                       f"output s = {reduce}(x * y, axes={axes})\nloss = mean(s)\n", "colsum.net")
    g = inference_graph(driver.forward(prog))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    x[-1, ..., 3] = np.nan  # in the last block: a NaN reaches the output through the partials
    outs = []
    for threads in (1, 2):
        c = driver.compile_graph(g, threads=threads)
        (k,) = c.schedule.kernels
        rows = math.prod(shape[:-1])
        assert loops(k).chunks == min(8, rows // 16)
        assert all(_worth_splitting(k, t) for t in targets) == (rows * shape[-1] >= 1 << 14)
        outs.append(c.step(x=x, y=y)["s"].copy())
    np.testing.assert_array_equal(outs[1], outs[0])
    ref = getattr(x.astype(np.float64) * y, reduce)(axis=tuple(range(len(shape) - 1)))
    assert np.isnan(outs[0][3]) and np.isnan(ref[3])
    np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-4)
