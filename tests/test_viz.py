"""graphc viz: the DOT text of forward and training graphs (clusters, styles, shapes on edges) and
its rendering; rendering tests are skipped where Graphviz's `dot` is not installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from graphc import driver
from graphc.errors import GraphcError
from graphc.export import dot
from graphc.export.dot import STYLE, to_dot, write_picture
from test_cli import graphc

MLP = Path(__file__).resolve().parent.parent / "models" / "mlp.net"
BATCH = 24  # the training step's batch, unlike any layer width


def parse(text: str, nesting: dict | None = None):
    """Nodes {id: (label, attributes, innermost cluster title)} and edges (tail, head, attributes)
    of DOT text, and into `nesting` each cluster's enclosing one; asserts the structure is well
    formed: balanced braces, every edge between declared nodes."""
    assert text.startswith("digraph ") and text.count("{") == text.count("}")
    nodes, edges, stack = {}, [], []
    for line in text.splitlines():
        if m := re.match(r"\s*label=\"(.*?)\"; fontname=\"Helvetica-Bold\"", line):
            if nesting is not None:
                nesting[m[1]] = stack[-1] if stack else None
            stack.append(m[1])
        elif line.strip() == "}" and stack:
            stack.pop()
        elif m := re.match(r"\s*(\w+) \[label=\"((?:[^\"\\]|\\.)*)\", (.*)\];$", line):
            nodes[m[1]] = (m[2], m[3], stack[-1] if stack else None)
        elif m := re.match(r"\s*(\w+) -> (\w+) \[(.*)\];$", line):
            edges.append((m[1], m[2], m[3]))
    for tail, head, _ in edges:
        assert tail in nodes and head in nodes, (tail, head)
    return nodes, edges


def labelled(nodes, label: str) -> list[str]:
    return [k for k, (lab, _, _) in nodes.items() if lab == label]


def test_forward_graph_clusters_layers_and_puts_shapes_on_edges():
    nodes, edges = parse(to_dot(driver.load(MLP).graph))
    clusters = {c for _, _, c in nodes.values() if c}
    assert clusters == {"fc1", "fc2", "out", "legend"}
    (w,) = labelled(nodes, "fc1.W")
    assert nodes[w][1] == STYLE["param"] and nodes[w][2] == "fc1"
    (x,) = labelled(nodes, "x")
    assert nodes[x][1] == STYLE["input"] and nodes[x][2] is None  # inputs belong to no layer
    (head,) = [h for t, h, _ in edges if t == x]  # a leaf has a box per use
    assert nodes[head][0] == "matmul" and nodes[head][2] == "fc1"
    shapes = {(nodes[t][0], nodes[h][0]): re.search(r'label="([^"]*)"', a)[1] for t, h, a in edges}
    assert shapes[("x", "matmul")] == "B×784" and shapes[("fc1.W", "matmul")] == "784×256"
    assert shapes[("softmax_cross_entropy", "loss")] == "scalar"
    assert not any(a == STYLE["backward"] for _, a, _ in nodes.values())


def test_training_graph_styles_backward_and_update_apart():
    g = driver.train_graph(driver.load(MLP), BATCH)
    nodes, edges = parse(to_dot(g))
    by_style = lambda s: [k for k, (_, a, c) in nodes.items() if a == STYLE[s] and c != "legend"]
    assert len(by_style("backward")) == sum(1 for n in g.nodes if n.grad_of)
    assert len(by_style("update")) == sum(1 for n in g.nodes if n.scope == "update")
    clusters = {c for _, _, c in nodes.values() if c}
    assert {"fc1 (backward)", "out (backward)", "fc1 (update)", "out (update)"} <= clusters
    (dw,) = [k for k, (lab, _, _) in nodes.items() if lab == "matmul ta=true\\nd.fc1.W"]
    assert nodes[dw][1] == STYLE["backward"] and nodes[dw][2] == "fc1 (backward)"
    assert labelled(nodes, "mul ·, 0.9")  # momentum: the literal shown in its operand position
    velocity = labelled(nodes, "fc1.W.velocity")
    assert velocity and all(nodes[k][1] == STYLE["state"] and nodes[k][2] == "fc1 (update)" for k in velocity)
    (written,) = labelled(nodes, "fc1.W ←")
    assert nodes[written][1] == STYLE["written"]
    # the gradient flows back: edges between backward nodes are drawn reversed
    back = [(t, h) for t, h, a in edges if "dir=back" in a]
    assert back and all(nodes[t][1] == nodes[h][1] == STYLE["backward"] for t, h in back)
    shapes = {re.search(r'label="([^"]*)"', a)[1] for _, _, a in edges}
    assert f"{BATCH}×256" in shapes and "784×256" in shapes


def test_nested_layers_nest_their_clusters():
    nesting: dict[str, str | None] = {}
    nodes, _ = parse(to_dot(driver.train_graph(driver.load(MLP.parent / "mlp_bn.net"), BATCH)), nesting)
    assert nesting["fc1.bn"] == "fc1" and nesting["fc1"] is None
    assert nesting["fc1.bn (backward)"] == "fc1 (backward)"
    (gamma,) = [k for k, (lab, _, c) in nodes.items() if lab == "fc1.bn.gamma" and c == "fc1.bn"]
    assert nodes[gamma][1] == STYLE["param"]


def test_unknown_format_and_missing_dot_are_clear_errors(tmp_path, monkeypatch):
    g = driver.load(MLP).graph
    with pytest.raises(GraphcError, match=r"unknown picture format '\.jpg'"):
        write_picture(g, tmp_path / "g.jpg")
    monkeypatch.setattr(dot.shutil, "which", lambda name: None)
    with pytest.raises(GraphcError, match="needs Graphviz's `dot` program") as e:
        write_picture(g, tmp_path / "g.png")
    assert "apt-get install graphviz" in str(e.value)
    write_picture(g, tmp_path / "g.dot")  # DOT text needs no Graphviz
    assert (tmp_path / "g.dot").read_text() == to_dot(g)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_cli_renders_png_and_svg(tmp_path):
    out = graphc("viz", "models/mlp.net", "--grad", "--batch", str(BATCH), "-o", str(tmp_path / "g.png"))
    assert "mlp.step" in out.stdout
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    graphc("viz", "models/mlp.net", "-o", str(tmp_path / "g.svg"))
    svg = (tmp_path / "g.svg").read_text()
    assert "<svg" in svg and "fc1.W" in svg and "B×784" in svg


def test_cli_draws_the_evaluation_form(tmp_path):
    out = tmp_path / "eval.dot"
    graphc("viz", "models/mlp_bn.net", "--eval", "-o", str(out))
    text = out.read_text()
    assert "running_mean" in text and "dropout" not in text  # batch norm on statistics, no dropout
    train = tmp_path / "train.dot"
    graphc("viz", "models/mlp_bn.net", "-o", str(train))
    assert "dropout" in train.read_text()
    r = graphc("viz", "models/mlp_bn.net", "--eval", "--grad", "-o", str(out), check=False)
    assert r.returncode == 2 and "--eval" in r.stderr
