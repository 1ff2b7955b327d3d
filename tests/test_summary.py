"""graphc summary: per layer, output shapes, parameter counts and forward FLOPs (computed here by hand),
and the training step's memory from its schedule's memory plan."""

from __future__ import annotations

from graphc import driver
from graphc.cli import main
from graphc.passes.pipeline import schedule
from graphc.runtime.train.summary import summarize


def _rows(model: str) -> list[tuple[str, str, int, int]]:
    return [(r.layer, r.shape, r.params, r.flops) for r in summarize(driver.load(model)).rows]


def test_twolayer_by_hand():
    # h = sigmoid(x @ W1 + b1): 784x50 multiply-adds, then an add and a sigmoid per hidden unit
    assert _rows("models/twolayer.net") == [
        ("line 14", "[B, 50]", 784 * 50 + 50, 2 * 784 * 50 + 50 + 50),
        ("line 15", "[B, 10]", 50 * 10 + 10, 2 * 50 * 10 + 10),
    ]


def test_lenet_by_hand():
    conv = lambda out, cin, k, hw: 2 * out * cin * k * k * hw * hw + 2 * out * hw * hw  # + bias, relu
    dense = lambda i, o, act=1: 2 * i * o + o + act * o
    assert _rows("models/lenet.net") == [
        ("line 20", "[B, 1, 28, 28]", 0, 0),                        # reshape: a view
        ("conv1", "[B, 6, 28, 28]", 6 * 25 + 6, conv(6, 1, 5, 28)),
        ("line 21", "[B, 6, 14, 14]", 0, 6 * 28 * 28),              # max: one compare per input
        ("conv2", "[B, 16, 10, 10]", 16 * 6 * 25 + 16, conv(16, 6, 5, 10)),
        ("line 22", "[B, 16, 5, 5]", 0, 16 * 10 * 10),
        ("line 23", "[B, 400]", 0, 0),
        ("fc1", "[B, 120]", 400 * 120 + 120, dense(400, 120)),
        ("fc2", "[B, 84]", 120 * 84 + 84, dense(120, 84)),
        ("out", "[B, 10]", 84 * 10 + 10, dense(84, 10, act=0)),
    ]


def test_memory_comes_from_the_steps_plan(capsys):
    prog = driver.load("models/twolayer.net")
    s = summarize(prog, batch=24)
    params = 784 * 50 + 50 + 50 * 10 + 10
    assert (s.params, s.param_bytes) == (params, 4 * params)
    assert s.state_bytes == 4 * params  # sgd momentum: one velocity per param
    assert s.input_bytes == 4 * (24 * 784 + 24 + 1)  # x, y and the learning rate
    assert s.arena_bytes == schedule(driver.train_graph(prog, 24)).plan.arena_bytes > 0
    assert main(["summary", "models/twolayer.net", "--batch", "24"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "params: 39,760 (155.3 KiB)" and out[-2] == "forward FLOPs per sample: 79,510"
    assert out[-1].startswith("training step at batch 24: params 155.3 KiB, optimizer and model state 155.3 KiB")
