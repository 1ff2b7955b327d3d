"""The worker pool: a step split across threads computes exactly what one thread computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.runtime.init import init_params

ROOT = Path(__file__).resolve().parent.parent


# mlp: GEMMs split by columns (37: uneven shares); twolayer at 128: its 50-wide GEMMs split by rows,
# including X^T dY with a transposed A
@pytest.mark.parametrize("model,batch", [("mlp", 128), ("mlp", 37), ("twolayer", 128)])
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
def test_gather_picks_rows_like_take(threads):
    """Step.gather (the generated batch gather, split across the pool) copies the rows an index
    picks, for the float features and the int labels, with an uneven share per thread."""
    prog = driver.load(ROOT / "models/twolayer.net")
    g = driver.train_graph(prog, 37)
    step = driver.compile_graph(g, init_params(g.params, 0), threads=threads).step
    rng = np.random.default_rng(1)
    rows = rng.random((501, 784), dtype=np.float32)
    labels = rng.integers(0, 10, 501).astype(step.inputs["y"].dtype)
    idx = rng.permutation(501)[:37]
    step.gather("x", rows, idx)
    step.gather("y", labels, idx)
    np.testing.assert_array_equal(step.inputs["x"], rows[idx])
    np.testing.assert_array_equal(step.inputs["y"], labels[idx])
    with pytest.raises(IndexError, match=r"37 row indices in \[0, 501\)"):
        step.gather("x", rows, np.full(37, 501))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        step.gather("x", rows.astype(np.float64), idx)
