"""Fuzzing the front end: mutated and truncated shipped models and random token streams only ever
raise GraphcError, and do so quickly.

Each input goes through everything up to native code: parse, lower, verify, the training graph,
scheduling (decompose, simplify, fuse, plan memory) and parameter initialization. A few mutants
that survive are compiled and run once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from graphc import driver
from graphc.errors import GraphcError
from graphc.frontend import load_source
from graphc.ops import REGISTRY
from graphc.passes.pipeline import schedule
from graphc.ir.init import init_params

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
MODELS = {p.name: p.read_text() for p in sorted((ROOT / "models").glob("*.net"))}
BATCH = 3

# words of the language and a few that are not, for insertions and random streams
TOKENS = ["net", "dim", "input", "param", "layer", "output", "metric", "train", "return", "as",
          "nograd", "int", "float", "fn", "f32", "f64", "i32", "B", "x", "y", "h", "W", "loss",
          "relu", "mean", "sum", "reshape", "matmul", "softmax_cross_entropy", "conv2d", "onehot",
          "transpose", "slice", "pad", "concat", "max_pool2d", "normal", "uniform", "zeros",
          "sgd", "adam", "lr", "batch", "epochs", "data", "digits", "axes", "shape", "n", "axis",
          "perm", "std", "0", "1", "-1", "2", "7", "0.5", "1e9", "99999999999", "1e400", ".5",
          "true", "false", '"s"', "=", ":", ",", "(", ")", "[", "]", "{", "}", "->", "+", "-",
          "*", "/", "@", "\n", " ", "#", "$", "\t", "\r", "é", "\x00"]


def load_everything(text: str) -> None:
    """Every stage a model file reaches before native code; GraphcError is the only way out."""
    prog = load_source(text, "fuzz.net")
    g = driver.train_graph(prog, BATCH)
    if sum(p.value.type.size() for p in g.params) <= 1 << 20:  # keep memory small
        init_params(g.params, 0)
    schedule(g)


def only_graphc_errors(text: str) -> None:
    """Loading `text` either works or raises a GraphcError with a message: nothing else."""
    try:
        load_everything(text)
    except GraphcError as e:
        assert str(e)


def mutants() -> st.SearchStrategy[str]:
    """A shipped model with one or two edits: a cut, a deletion, a duplication, an inserted token
    or a changed number."""

    @st.composite
    def mutate(draw) -> str:
        text = draw(st.sampled_from(list(MODELS.values())))
        for _ in range(draw(st.integers(1, 2))):
            n = len(text)
            i = draw(st.integers(0, n))
            j = draw(st.integers(i, min(n, i + 40)))
            kind = draw(st.sampled_from(["cut", "delete", "duplicate", "insert", "replace"]))
            if kind == "cut":
                text = text[:i]
            elif kind == "delete":
                text = text[:i] + text[j:]
            elif kind == "duplicate":
                text = text[:j] + text[i:j] + text[j:]
            else:
                tok = draw(st.sampled_from(TOKENS))
                text = text[:i] + tok + (text[j:] if kind == "replace" else text[i:])
        return text

    return mutate()


# one op call with random arguments: how far do the ops' shape rules and vjps trust attributes?
OP_MODEL = """net t
dim B
input x : f32[B, 6, 5, 4]
input y : i32[B]
input z : f32[B, 20]
param w : f32[4, 6, 3, 2] = normal()
h = {call}
loss = {loss}
train {{ optimizer = {optimizer} }}
"""
ATTR_VALUES = ["0", "1", "3", "-1", "-2", "100", "0.5", "1e9", "true", "false", '"a"', "[]", "[1]",
               "[0, 1]", "[2, 1, 0]", "[-1]", "[B, -1]", "[B, 20]", "[B, 6, 20]", "[[1]]", "f32",
               "i32", "B"]


@st.composite
def op_calls(draw) -> str:
    op = REGISTRY[draw(st.sampled_from(sorted(REGISTRY)))]
    names, _ = op.attributes()
    args = draw(st.lists(st.sampled_from(["x", "y", "z", "w", "0.5"]), min_size=op.nargs,
                         max_size=op.nargs + 1))
    kwargs = [f"{n}={draw(st.sampled_from(ATTR_VALUES))}" for n in names if draw(st.booleans())]
    loss = draw(st.sampled_from(["mean(h)", "sum(h * h)", "softmax_cross_entropy(h, y)", "h"]))
    optimizer = draw(st.sampled_from(["sgd(lr=0.1, momentum=0.9)", "adam(lr=0.1)",
                                      "rmsprop(lr=0.1, centered=true)", "adagrad(lr=0.1)"]))
    return OP_MODEL.format(call=f"{op.name}({', '.join(args + kwargs)})", loss=loss,
                           optimizer=optimizer)


def fuzz(examples: int) -> settings:
    """Reproducible runs (no example database), each input under a deadline: long enough to
    schedule the largest shipped model (gpt.net's step) on a loaded 2-core machine, short enough
    to catch a mutant that makes a stage blow up."""
    return settings(max_examples=examples, deadline=15000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# what the fuzzer found, kept as examples: an int argument of a layer that became a negative dim
@fuzz(300)
@given(mutants())
@example(MODELS["mlp.net"].replace("units=256) as fc1", "units=-3) as fc1"))
def test_mutated_models_raise_only_graphc_errors(text):
    try:
        load_everything(text)
    except GraphcError as e:
        assert str(e)  # the message renders (position, source line, caret)


def op_call(call: str, loss: str = "mean(h)", optimizer: str = "adam(lr=0.1)") -> str:
    return OP_MODEL.format(call=call, loss=loss, optimizer=optimizer)


# what the fuzzer found, kept as examples: attributes of the wrong kind that shape rules let
# through and later stages choked on, a loss that folds to a constant, and an update that
# simplifies to nothing (a param that gets no gradient)
@fuzz(400)
@given(op_calls())
@example(op_call("leaky_relu(w, alpha=[-1])"))
@example(op_call("mean(0.5, keepdims=[B, -1])"))
@example(op_call("broadcast_to(0.5, shape=[-1])"))
@example(op_call("transpose(0.5, perm=[-1])"))
@example(op_call("log_softmax(z, axis=1e9)"))
@example(op_call("softmax(z, axis=f32)"))
@example(op_call("floor(0.5)", loss="h"))
@example(op_call("gt(w, w)", optimizer="adagrad(lr=0.1)"))
def test_random_op_calls_raise_only_graphc_errors(text):
    only_graphc_errors(text)


@fuzz(300)
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map(" ".join))
def test_random_token_streams_raise_only_graphc_errors(text):
    only_graphc_errors(text)


@fuzz(150)
@given(st.text(max_size=80))
def test_random_text_raises_only_graphc_errors(text):
    only_graphc_errors(text)


# Mutants of digits.net whose sizes changed and that still load: these compile and run a step.
@fuzz(3)
@given(st.lists(st.integers(1, 70), min_size=3, max_size=3))
def test_resized_mutants_compile_and_run(sizes):
    text = MODELS["digits.net"].replace("units=50", f"units={sizes[0]}").replace(
        "units=10", f"units={sizes[1]}").replace("f32[B, 64]", f"f32[B, {sizes[2]}]")
    prog = load_source(text, "fuzz.net")
    g = driver.train_graph(prog, BATCH)
    step = driver.compile_graph(g, init_params(g.params, 0), threads=1).step
    rng = np.random.default_rng(0)
    feeds = {"x": rng.random((BATCH, sizes[2]), dtype=np.float32),
             "y": rng.integers(0, sizes[1], BATCH).astype(np.int32), "lr": 0.1}
    assert np.isfinite(step(**feeds)[g.loss])
