"""The IR's two written forms read back: text (parse_text) and JSON (from_json), for every shipped model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphc import driver
from graphc.autodiff.graphs import gradient_graph
from graphc.errors import GraphcError
from graphc.ir.graph import Graph
from graphc.ir.parse_text import parse_text
from graphc.ir.printer import print_graph
from graphc.ir.serialize import from_json, loads, to_json

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models").glob("*.net"))
BATCH = 7  # non-square against every layer width


def graphs(path: Path) -> dict[str, Graph]:
    """The forward graph (symbolic, bound, and its evaluation form), the training step with the
    model's optimizer and with Adam (its step counter and bias-correction literals), and the
    gradient graph."""
    prog = driver.load(path)
    return {"forward": prog.graph, "bound": driver.forward(prog, BATCH),
            "eval": driver.forward(prog, BATCH, training=False),
            "step": driver.train_graph(prog, BATCH),
            "adam": driver.train_graph(prog, BATCH, "adam", {"weight_decay": 0.01}),
            "grad": gradient_graph(driver.forward(prog, BATCH))}


def comparable(g: Graph) -> dict:
    """The JSON form, with node positions as the text keeps them: file name and line (in loop
    bodies too)."""
    def strip(d: dict) -> dict:
        for n in d["nodes"]:
            if n["loc"]:
                n["loc"] = [Path(n["loc"][0]).name, n["loc"][1]]
            for a in n["attrs"].values():
                if isinstance(a, dict):
                    strip(a)
        return d
    return strip(to_json(g))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_text_ir_parses_back_to_the_same_graph(path):
    for kind, g in graphs(path).items():
        text = print_graph(g)
        back = parse_text(text)
        assert print_graph(back) == text, kind
        assert comparable(back) == comparable(g), kind


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_json_ir_round_trips(path):
    for kind, g in graphs(path).items():
        assert to_json(from_json(to_json(g))) == to_json(g), kind


def test_text_carries_leaf_details_and_roles():
    g = parse_text(print_graph(driver.train_graph(driver.load(ROOT / "models" / "mlp.net"), BATCH)))
    assert g.dims == {"B": BATCH}
    assert [(p.value.name, p.init) for p in g.params][:2] == [("fc1.W", "he_normal"), ("fc1.b", "zeros")]
    assert [s.value.name for s in g.state][0] == "fc1.W.velocity"
    assert {i.value.name: i.nograd for i in g.inputs} == {"x": False, "y": True, "lr": True}
    assert g.loss == "loss" and g.metrics == ("accuracy",)
    w = g.value("fc1.W")
    assert any(t is w for t, _ in g.updates)
    backward = [n for n in g.nodes if n.grad_of]
    assert backward and all(n.grad_of[0] in g.nodes for n in backward)
    apples = parse_text(print_graph(driver.load(ROOT / "models" / "apples.net").graph))
    assert {i.value.name: i.default for i in apples.inputs}["tax"] == 1.08


TEXT = """graph tiny(x: f32[B,3], y: i32[B] nograd; W: f32[3,5] = normal(std=0.5)) -> (loss: f32[] loss) {
  %0: f32[B,5] = matmul x, W                     @tiny.net:4
  %1: f32[] = softmax_cross_entropy %0, y        @tiny.net:5
  loss = %1
}
"""


def test_hand_written_text():
    g = parse_text(TEXT)
    assert g.params[0].init_args == {"std": 0.5}
    assert g.nodes[0].out.shape == ("B", 5) and g.nodes[0].loc.line == 4
    assert g.outputs["loss"] is g.nodes[1].out and g._count == 2


@pytest.mark.parametrize("old, new, where, message", [
    ("%0: f32[B,5]", "%0: f32[B,4]", "2:3", "%0 is declared f32[B,4] but matmul gives f32[B,5]"),
    ("matmul x, W", "matmul x, V", "2:28", "V is not defined"),
    ("matmul x, W", "matmul x, W [tb=true]", "2:18", "inner dimensions differ"),
    ("matmul x, W", "matmul x, W [tc=true]", "2:18", "matmul has no attribute 'tc'"),
    ("matmul x, W", "matmal x, W", "2:18", "unknown op 'matmal'"),
    ("W: f32[3,5]", "W: f16[3,5]", "1:46", "unknown dtype 'f16'"),
    ("loss = %1", "loss = %1 %1", "4:13", "unexpected '%1'"),
    ("  loss = %1\n", "", "1:78", "output loss is declared but never assigned"),
])
def test_errors_point_at_the_text(old, new, where, message):
    assert old in TEXT
    with pytest.raises(GraphcError) as e:
        parse_text(TEXT.replace(old, new), "tiny.ir")
    assert str(e.value).startswith(f"tiny.ir:{where}: error: ") and message in str(e.value)


def test_docs_examples_are_the_same_graph():
    page = (ROOT / "docs" / "ir.md").read_text()
    json_example = re.findall(r"```json\n(.*?)```", page, re.S)[0]
    text_example = re.findall(r"```\n(graph .*?)```", page, re.S)[0]
    assert print_graph(loads(json_example)) == print_graph(parse_text(text_example))


def test_verifier_raises_an_internal_error_with_the_graph():
    """A broken invariant is graphc's bug: an InternalError (not an assert, which `python -O`
    strips) naming the value, with the printed graph."""
    from graphc.errors import InternalError
    from graphc.ir.graph import TensorType
    from graphc.ir.verify import verify
    g = driver.train_graph(driver.load(ROOT / "models" / "twolayer.net"), 4)
    verify(g)
    g.nodes[3].out.type = TensorType("f32", (9, 7))
    with pytest.raises(InternalError, match=r"%3: type f32\[9,7\] but matmul gives f32\[4,10\]") as e:
        verify(g)
    assert "graph twolayer.step" in str(e.value) and str(e.value).startswith("internal error: ")
