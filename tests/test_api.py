"""The Python API (graphc.load, graphc.Model): docs/python.md's examples run as written; step, grad and
predict share one set of params; inputs are checked against the model with positioned errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.errors import DataError, GraphcError
from graphc.runtime.train.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent

# a small non-square model: 6 features, 5 hidden, 3 classes, batch 4
SMALL = """net small
dim B
input x : f32[B, 6]
input y : i32[B]
param W1 : f32[6, 5] = xavier_uniform()
param b1 : f32[5] = zeros()
param W2 : f32[5, 3] = xavier_uniform()
logits = tanh(x @ W1 + b1) @ W2
loss = softmax_cross_entropy(logits, y)
metric accuracy = accuracy(logits, y)
train { optimizer = sgd(lr=0.5)  batch = 4  seed = 3 }
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> graphc.Model:
    path = tmp_path_factory.mktemp("api") / "small.net"
    path.write_text(SMALL)
    return graphc.load(path)


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def test_the_docs_examples_run_in_order(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/python.md").read_text(), re.S)
    assert len(blocks) >= 6
    (tmp_path / "models").symlink_to(ROOT / "models")
    scope: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, "docs/python.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "params.npz").exists() and len((tmp_path / "train.jsonl").read_text().splitlines()) == 2
    assert scope["history"][-1]["test_accuracy"] > 0.5 and len(scope["seen"]) == 2
    assert "given shape [5, 64]" in capsys.readouterr().out


def test_step_grad_and_predict_share_the_params(small):
    x, y = _batch(4)
    before = small.params["W1"].copy()
    g = small.grad(x=x, y=y)
    assert np.array_equal(small.params["W1"], before)  # grad updates nothing
    assert small.grad(x=x, y=y)["loss"] == g["loss"]
    assert g["d.W1"].shape == (6, 5) and g["d.x"].shape == (4, 6)
    out = small.step(x=x, y=y, lr=0.5)
    assert out["loss"] == pytest.approx(g["loss"], rel=1e-6) and set(out) == {"loss", "accuracy"}
    # plain SGD: the step moved W1 by lr times the gradient grad computed
    np.testing.assert_allclose(small.params["W1"], before - 0.5 * g["d.W1"], rtol=1e-4, atol=1e-6)
    # predict reads the updated arrays
    h = np.tanh(x @ small.params["W1"] + small.params["b1"]) @ small.params["W2"]
    np.testing.assert_allclose(small.predict(x=x)["logits"], h, rtol=1e-5, atol=1e-6)


def test_predict_takes_any_number_of_samples(small):
    x, y = _batch(11, seed=1)  # two batches of 4 and a remainder of 3
    out = small.predict(x=x, y=y)["logits"]  # labels are ignored
    assert out.shape == (11, 3)
    np.testing.assert_allclose(out[8:], small.predict(x=x[8:])["logits"], rtol=1e-6)
    np.testing.assert_allclose(out[:1], small.predict(x=x[:1])["logits"], rtol=1e-6)


def test_fit_and_step_share_one_step_and_its_optimizer_state(tmp_path):
    """fit trains with the very step `step` runs: the Adam moments and step counter one leaves are
    the ones the other continues with. Model b does fit's epoch by hand, batch by batch in the
    trainer's order, through step: the two end bit for bit alike, and so does the next step."""
    path = tmp_path / "adam.net"
    path.write_text(SMALL.replace("sgd(lr=0.5)", "adam(lr=0.05)"))
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 6)).astype(np.float32), y=rng.integers(0, 3, 30))
    a, b = graphc.load(path), graphc.load(path)
    for m in (a, b):
        m.step(x=_batch(4, seed=7)[0], y=_batch(4, seed=7)[1])  # moments that fit must carry on
    a.fit(tmp_path / "d.npz", epochs=1, progress=False, report=lambda line: None)
    train = load_dataset(tmp_path / "d.npz").train
    order = np.random.default_rng(3 + 1).permutation(len(train["y"]))  # the trainer's: seed 3, plus 1
    for i in range(len(order) // 4):
        pick = order[4 * i:4 * i + 4]
        b.step(x=train["x"][pick], y=train["y"][pick])
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    x, y = _batch(4, seed=8)
    assert a.step(x=x, y=y) == b.step(x=x, y=y)  # after fit, step continues fit's optimizer state
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_save_and_load_params(small, tmp_path):
    small.save(tmp_path / "p.npz")
    saved = {k: v.copy() for k, v in small.params.items()}
    arrays = {k: id(v) for k, v in small.params.items()}
    small.params["W2"][...] = 7
    small.load_params(tmp_path / "p.npz")
    assert all(np.array_equal(small.params[k], v) for k, v in saved.items())
    assert {k: id(v) for k, v in small.params.items()} == arrays  # in place: the graphs see them
    np.savez(tmp_path / "bad.npz", W1=np.zeros((5, 6)), b1=np.zeros(5), W2=np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"param W1 has shape \[5, 6\], model wants f32\[6,5\]"):
        small.load_params(tmp_path / "bad.npz")


@pytest.mark.parametrize("feeds, message", [
    (dict(x=np.zeros((3, 6)), y=np.zeros(4, np.int32)), r"small.net:3:7: error: input x is f32\[4,6\], given shape \[3, 6\]"),
    (dict(x=np.zeros((4, 6)), y=np.array([0, 1.5, 2, 0])), r"input y is i32\[4\]: give non-negative whole numbers \(got 1.5\)"),
    (dict(x=np.zeros((4, 6)), y=np.array([0, -1, 2, 0])), r"input y is i32\[4\]: give non-negative whole numbers \(got -1\)"),
    (dict(x=np.zeros((4, 6), bool).astype(str), y=np.zeros(4, np.int32)), r"input x is f32\[4,6\]: give numbers \(got <U5\)"),
    (dict(x=np.zeros((4, 6)), y=np.array([0, 1, 3, 0])), r"small.net:9:8: error: input y: label 3 of batch sample 2 is out of range"),
    (dict(x=np.full((4, 6), np.nan), y=np.zeros(4, np.int32)), r"input x is f32\[4,6\]: give finite numbers"),
    (dict(x=np.zeros((4, 6))), r"input y \(i32\[4\]\) is not given"),
    (dict(x=np.zeros((4, 6)), y=np.zeros(4, np.int32), z=1.0), r"no input z here \(its inputs: x, y\)"),
])
def test_bad_inputs_are_one_positioned_error(small, feeds, message):
    before = small.params["W1"].copy()
    with pytest.raises(GraphcError, match=message) as e:
        small.step(**feeds)
    assert "\n" not in str(e.value).split("\n    ")[0]
    assert np.array_equal(small.params["W1"], before)  # nothing ran


def test_predict_errors(small):
    with pytest.raises(DataError, match=r"the same number for each input \(x\); got x: a scalar"):
        small.predict(x=np.float32(1.0))
    with pytest.raises(GraphcError, match="the learning rate must be a positive number, got -1"):
        small.step(x=_batch(4)[0], y=_batch(4)[1], lr=-1)


def test_a_fixed_batch_predicts_any_number_padding_its_last_batch(tmp_path):
    path = tmp_path / "fixed.net"
    path.write_text(SMALL.replace("dim B\n", "").replace("[B, 6]", "[4, 6]").replace("[B]", "[4]"))
    m = graphc.load(path)
    x = _batch(6)[0]
    out = m.predict(x=x)["logits"]
    assert out.shape == (6, 3)
    np.testing.assert_allclose(out, np.tanh(x @ m.params["W1"] + m.params["b1"]) @ m.params["W2"],
                               rtol=1e-5, atol=1e-6)


def test_whole_numbers_and_a_number_filling_an_input_are_taken(small):
    """Labels given as whole floats are labels, as in data files; a number fills an input."""
    x, y = _batch(4)
    assert small.grad(x=x, y=y.astype(np.float64))["loss"] == small.grad(x=x, y=y)["loss"]
    assert small.grad(x=0.5, y=y)["loss"] == small.grad(x=np.full((4, 6), 0.5), y=y)["loss"]
