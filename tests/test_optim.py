"""Optimizers, learning-rate schedules and gradient clipping, compiled and run for several steps
against NumPy references written from the algorithms' definitions (PyTorch's conventions)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.autodiff.lr_schedule import COUNTER, horizon, scheduled_lr
from graphc.autodiff.graphs import training_graph
from graphc.driver import compile_graph
from graphc.frontend import load_source
from graphc.ir.graph import Builder, Graph, Input, Param, TensorType, Value
from graphc.ir.parse_text import parse_text
from graphc.ir.printer import print_graph
from graphc.runtime.train.data import load_dataset
from graphc.runtime.train.trainer import TrainOptions, train

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {"W": (3, 5), "b": (5,)}  # non-square, and two params for the global norm
STEPS = 6


def linear_model() -> Graph:
    """loss = sum(W * gW) + sum(b * gb): the gradient of each param is exactly its input g*."""
    g = Graph("lin")
    b = Builder(g)
    terms = []
    for name, shape in SHAPES.items():
        w, gw = Value(name, TensorType("f32", shape)), Value(f"g{name}", TensorType("f32", shape))
        g.params.append(Param(w, "normal"))
        g.inputs.append(Input(gw, nograd=True))
        terms.append(b.sum(b.mul(w, gw)))
    g.outputs = {"loss": b.add(*terms)}
    g.loss = "loss"
    return g


# ---- NumPy references: one update of param w with gradient g; `st` holds the param's state ----

def ref_sgd(w, g, st, lr, t, momentum=0.0, nesterov=0.0, weight_decay=0.0):
    g = g + weight_decay * w
    if momentum:
        st["buf"] = momentum * st.get("buf", 0) + g
        g = g + momentum * st["buf"] if nesterov else st["buf"]
    return w - lr * g


def ref_adagrad(w, g, st, lr, t, eps=1e-10, weight_decay=0.0):
    g = g + weight_decay * w
    st["sum"] = st.get("sum", 0) + g * g
    return w - lr * g / (np.sqrt(st["sum"]) + eps)


def ref_rmsprop(w, g, st, lr, t, alpha=0.99, eps=1e-8, momentum=0.0, centered=0.0, weight_decay=0.0):
    g = g + weight_decay * w
    st["sq"] = alpha * st.get("sq", 0) + (1 - alpha) * g * g
    avg = st["sq"]
    if centered:
        st["mean"] = alpha * st.get("mean", 0) + (1 - alpha) * g
        avg = avg - st["mean"] ** 2
    step = g / (np.sqrt(avg) + eps)
    if momentum:
        st["buf"] = momentum * st.get("buf", 0) + step
        step = st["buf"]
    return w - lr * step


def ref_adam(w, g, st, lr, t, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled=False):
    if decoupled:
        w = w * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * w
    st["m"] = beta1 * st.get("m", 0) + (1 - beta1) * g
    st["v"] = beta2 * st.get("v", 0) + (1 - beta2) * g * g
    m_hat, v_hat = st["m"] / (1 - beta1 ** t), st["v"] / (1 - beta2 ** t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps)


REFS = {"sgd": ref_sgd, "adagrad": ref_adagrad, "rmsprop": ref_rmsprop, "adam": ref_adam,
        "adamw": lambda *a, weight_decay=0.01, **k: ref_adam(*a, weight_decay=weight_decay, decoupled=True, **k)}


def ref_clip(grads: dict, max_norm: float) -> dict:
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    return {k: g * min(1.0, max_norm / (norm + 1e-6)) for k, g in grads.items()}


def ref_lr(k: int, lr: float, name: str, total: int = 0, warmup: int = 0, every: int = 1,
           gamma: float = 0.1, final: float = 0.0) -> float:
    """The learning rate of step k (0-based)."""
    scale = min(1.0, (k + 1) / warmup) if warmup else 1.0
    j = max(k - warmup, 0)
    if name == "step":
        scale *= gamma ** (j // every)
    elif name == "cosine":
        scale *= final + (1 - final) * (1 + math.cos(math.pi * min(1.0, j / max(total - warmup, 1)))) / 2
    return lr * scale


def run_both(optimizer: str, args: dict, lr: float = 0.05, clip: float | None = None,
             grad_scale: float = 1.0, seed: int = 0):
    """Compile the training step of the linear model, run STEPS steps with random gradients, and the
    NumPy reference alongside in float64; returns (compiled params, reference params)."""
    rng = np.random.default_rng(seed)
    g = training_graph(linear_model(), optimizer, args, clip_norm=clip)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    step = compile_graph(g, params).step
    states = {k: {} for k in SHAPES}
    for t in range(1, STEPS + 1):
        grads = {k: (grad_scale * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
        step(lr=lr, **{f"g{k}": v for k, v in grads.items()})
        grads = {k: v.astype(np.float64) for k, v in grads.items()}
        if clip:
            grads = ref_clip(grads, clip)
        for k in SHAPES:
            ref[k] = REFS[optimizer](ref[k], grads[k], states[k], lr, t, **args)
    return params, ref


CASES = [
    ("sgd", {}),
    ("sgd", {"weight_decay": 0.1}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.8, "nesterov": 1.0, "weight_decay": 0.05}),
    ("adagrad", {}),
    ("adagrad", {"eps": 0.1, "weight_decay": 0.1}),
    ("rmsprop", {}),
    ("rmsprop", {"alpha": 0.9, "eps": 0.05, "weight_decay": 0.1}),
    ("rmsprop", {"momentum": 0.9, "centered": 1.0}),
    ("adam", {}),
    # an eps large enough to tell where it is added (to sqrt(v_hat), as PyTorch does)
    ("adam", {"beta1": 0.8, "beta2": 0.99, "eps": 0.1, "weight_decay": 0.1}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.2, "beta2": 0.95}),
]


@pytest.mark.parametrize("optimizer,args", CASES, ids=[f"{o}-{'-'.join(a) or 'defaults'}" for o, a in CASES])
def test_optimizer_matches_reference(optimizer, args):
    got, want = run_both(optimizer, args)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("grad_scale", [5.0, 0.05])  # the global norm above and below the limit
def test_clipping_by_global_norm_matches_reference(grad_scale):
    got, want = run_both("sgd", {"momentum": 0.9}, clip=1.0, grad_scale=grad_scale)
    for k in SHAPES:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    unclipped, _ = run_both("sgd", {"momentum": 0.9}, grad_scale=grad_scale)
    assert np.array_equal(got["W"], unclipped["W"]) == (grad_scale < 1)


def lr_graph(name: str, args: dict) -> Graph:
    """A graph whose only output is the scheduled learning rate; the step counter is its state."""
    g = Graph("sched")
    lr = Value("lr", TensorType("f32", ()))
    g.inputs.append(Input(lr, nograd=True))
    g.outputs = {"lr_t": scheduled_lr(g, lr, name, args)}
    return g


SCHEDULE_CASES = [
    ("step", {"every": 4, "gamma": 0.5}, {"every": 4, "gamma": 0.5}),
    ("step", {"every_epochs": 2, "warmup": 3}, {"every": 10, "warmup": 3}),  # 5 steps per epoch
    ("cosine", {}, {}),
    ("cosine", {"warmup": 6, "final": 0.1}, {"warmup": 6, "final": 0.1}),
    ("cosine", {"warmup_epochs": 1}, {"warmup": 5}),
    ("constant", {"warmup": 7}, {"warmup": 7}),
]


@pytest.mark.parametrize("name,args,ref_args", SCHEDULE_CASES, ids=[f"{c[0]}-{'-'.join(c[1])}" for c in SCHEDULE_CASES])
def test_schedule_gives_the_reference_lr_each_step(name, args, ref_args):
    total = 30
    step = compile_graph(lr_graph(name, args)).step
    feeds = {k: v for k, v in horizon(5, 6).items() if k in step.inputs}  # 5 steps x 6 epochs
    assert set(feeds) == ({"total_steps"} if name == "cosine" else set()) | \
        ({"epoch_steps"} if any(k.endswith("_epochs") for k in args) else set())
    got = [float(step(lr=0.3, **feeds)["lr_t"]) for _ in range(total + 3)]
    want = [ref_lr(k, 0.3, name, total, **ref_args) for k in range(total + 3)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert float(step.state[COUNTER]) == total + 3


def test_cosine_warmup_moves_params_by_the_scheduled_lr():
    """Through the whole training step: with SGD and every gradient 1, each step moves every
    element of W by exactly that step's learning rate."""
    warmup, total, lr = 4, 20, 0.5
    g = training_graph(linear_model(), "sgd", {}, "cosine", {"warmup": warmup, "final": 0.2})
    params = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    step = compile_graph(g, params).step
    ones = {f"g{k}": np.ones(s, np.float32) for k, s in SHAPES.items()}
    deltas = []
    for _ in range(total):
        before = params["W"].copy()
        step(lr=lr, total_steps=total, **ones)
        deltas.append(before - params["W"])
    deltas = np.array(deltas)
    assert np.all(deltas == deltas[:, :1, :1])  # one learning rate per step
    lrs = deltas[:, 0, 0]
    np.testing.assert_allclose(lrs, [ref_lr(k, lr, "cosine", total, warmup, final=0.2) for k in range(total)],
                               rtol=1e-5)
    assert np.all(np.diff(lrs[:warmup]) > 0) and lrs[warmup - 1] == pytest.approx(lr)  # warm-up
    assert np.all(np.diff(lrs[warmup:]) < 0) and lrs[-1] > 0.2 * lr                  # then decay


def test_resuming_from_state_continues_exactly():
    """The counter and the optimizer's moments are state: restoring them (and the params) into a
    fresh step continues the schedule and the bias corrections bit for bit."""
    g = training_graph(linear_model(), "adam", {"weight_decay": 0.01}, "cosine", {"warmup": 2}, clip_norm=0.5)
    rng = np.random.default_rng(1)
    feeds = [{f"g{k}": rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(6)]
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}

    straight = compile_graph(g, {k: v.copy() for k, v in init.items()}).step
    for f in feeds:
        straight(lr=0.1, total_steps=6, **f)

    first = compile_graph(g, {k: v.copy() for k, v in init.items()}).step
    for f in feeds[:3]:
        first(lr=0.1, total_steps=6, **f)
    resumed = compile_graph(g, {k: v.copy() for k, v in first.params.items()}).step
    for k, v in first.state.items():
        resumed.state[k][...] = v
    for f in feeds[3:]:
        resumed(lr=0.1, total_steps=6, **f)
    assert float(resumed.state[COUNTER]) == 6
    for k in SHAPES:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])


def test_schedule_and_clipping_in_the_printed_step():
    prog = load_source("net t\ndim B\ninput x : f32[B, 3]\nparam W : f32[3, 2] = zeros()\n"
                       "loss = mean(x @ W)\ntrain {\n  optimizer = rmsprop(lr=0.01)\n"
                       "  schedule = cosine(warmup=10)\n  clip_norm = 2.5\n}\n", "t.net")
    g = driver.train_graph(prog, 4)
    text = print_graph(g)
    assert "total_steps: f32[] nograd" in text and f"state {COUNTER}: f32[]" in text
    ops = {(n.op, n.scope) for n in g.nodes}
    assert {("sin", "schedule"), ("minimum", "schedule"), ("sqrt", "clip"), ("minimum", "clip")} <= ops
    assert print_graph(parse_text(text)) == text  # the text form reads back


def test_train_block_schedule_and_clip_norm():
    base = "net t\ninput x : f32[]\nloss = x * x\n"
    t = load_source(base + "train { optimizer = adagrad(lr=0.1, eps=1e-6)\n"
                    "  schedule = step(every_epochs=3, gamma=0.5, warmup=100)  clip_norm = 1 }\n").train
    assert (t.optimizer, t.opt_args) == ("adagrad", {"lr": 0.1, "eps": 1e-6})
    assert (t.schedule, t.schedule_args, t.clip_norm) == ("step", {"every_epochs": 3, "gamma": 0.5,
                                                                   "warmup": 100}, 1.0)
    assert (t.locs["schedule.gamma"].line, t.locs["schedule.gamma"].col) == (5, 41)
    t = load_source(base + "train { schedule = cosine }\n").train
    assert (t.schedule, t.schedule_args, t.clip_norm) == ("cosine", {}, None)


def test_trainer_feeds_the_schedule_its_run_length():
    """digits with cosine decay: fed total_steps, 3 epochs train well; were it left at 0, the lr
    would drop to 0 right after the 5 warm-up steps and accuracy would stay near chance."""
    prog = driver.load(ROOT / "models" / "digits.net")
    prog.train.schedule, prog.train.schedule_args, prog.train.clip_norm = "cosine", {"warmup": 5}, 5.0
    opts = TrainOptions(epochs=3, batch=32, lr=0.1, seed=0, optimizer="sgd", opt_args={"momentum": 0.9},
                        progress=False)
    history = train(prog, load_dataset("digits"), opts, report=lambda line: None)
    assert history[-1]["test_accuracy"] >= 0.9
