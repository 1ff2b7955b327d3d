"""The front end: .net source -> forward graph and train settings, and every error positioned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphc.autodiff.graphs import gradient_graph
from graphc.driver import compile_graph
from graphc.errors import GraphcError
from graphc.frontend import load, load_source
from graphc.ir.bind import bind
from graphc.ops import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def shapes(leaves) -> dict[str, tuple]:
    return {x.value.name: (x.value.dtype, x.value.shape) for x in leaves}


def ops(g) -> list[str]:
    return [n.op for n in g.nodes]


# ---- the bundled models ----

def test_mlp_layers_are_inlined_with_scoped_params():
    p = load(MODELS / "mlp.net")
    g = p.graph
    assert g.name == "mlp"
    assert shapes(g.inputs) == {"x": ("f32", ("B", 784)), "y": ("i32", ("B",))}
    assert [i.nograd for i in g.inputs] == [False, True]
    assert shapes(g.params) == {
        "fc1.W": ("f32", (784, 256)), "fc1.b": ("f32", (256,)),
        "fc2.W": ("f32", (256, 256)), "fc2.b": ("f32", (256,)),
        "out.W": ("f32", (256, 10)), "out.b": ("f32", (10,))}
    assert [q.init for q in g.params] == ["he_normal", "zeros"] * 3
    assert [(n.op, n.scope) for n in g.nodes] == [
        ("matmul", "fc1"), ("add", "fc1"), ("relu", "fc1"),
        ("matmul", "fc2"), ("add", "fc2"), ("relu", "fc2"),
        ("matmul", "out"), ("add", "out"),  # act=id adds no node
        ("softmax_cross_entropy", ""), ("accuracy", "")]
    assert g.nodes[2].out.shape == ("B", 256)  # the batch dim stays symbolic
    assert g.dims == {}
    assert list(g.outputs) == ["loss", "accuracy"] and g.loss == "loss" and g.metrics == ("accuracy",)
    assert g.outputs["loss"] is g.nodes[8].out
    t = p.train
    assert (t.optimizer, t.opt_args, t.batch, t.epochs, t.seed, t.data) == \
        ("sgd", {"lr": 0.05, "momentum": 0.9}, 128, 10, 0, "mnist")


def test_twolayer_is_the_blog_net():
    g = load(MODELS / "twolayer.net").graph
    assert shapes(g.params) == {"W1": ("f32", (784, 50)), "b1": ("f32", (50,)),
                                "W2": ("f32", (50, 10)), "b2": ("f32", (10,))}
    assert ops(g) == ["matmul", "add", "sigmoid", "matmul", "add", "softmax_cross_entropy", "accuracy"]
    assert g.inputs[1].nograd  # i32 labels are nograd without saying so
    assert g.nodes[3].inputs[1].name == "W2" and g.nodes[3].out.shape == ("B", 10)


def test_digits_has_64_inputs_and_digits_data():
    p = load(MODELS / "digits.net")
    assert shapes(p.graph.params) == {"fc1.W": ("f32", (64, 50)), "fc1.b": ("f32", (50,)),
                                      "fc2.W": ("f32", (50, 10)), "fc2.b": ("f32", (10,))}
    assert p.train.data == "digits" and p.train.batch == 32 and p.train.epochs == 30


def test_apples_scalar_graph():
    g = load(MODELS / "apples.net").graph
    assert [(i.value.name, i.value.shape, i.default) for i in g.inputs] == [
        ("apple", (), 100.0), ("apple_count", (), 5.0), ("orange", (), 150.0),
        ("orange_count", (), 3.0), ("tax", (), 1.08)]
    assert not g.params
    assert ops(g) == ["mul", "mul", "add", "mul"]
    assert list(g.outputs) == ["total"] and g.loss == "total" and g.metrics == ()
    assert g.outputs["total"].producer.inputs[1].name == "tax"


# ---- expressions ----

HEAD = "net t\ninput a : f32[2, 5]\ninput b : f32[2, 3]\ninput c : f32[2, 3]\ninput d : f32[3, 5]\n"


def test_precedence_mul_and_matmul_bind_tighter_than_add():
    g = load_source(HEAD + "output r = a + b * c @ d\n").graph
    mul, mm, add = g.nodes
    assert ops(g) == ["mul", "matmul", "add"]
    assert [v.name for v in mul.inputs] == ["b", "c"]
    assert mm.inputs == [mul.out, g.value("d")]
    assert add.inputs == [g.value("a"), mm.out]
    assert add.out.shape == (2, 5)


def test_left_associativity_parentheses_and_unary_minus():
    g = load_source(HEAD + "output r = -b - c - (b - c) * 2\n").graph
    assert ops(g) == ["neg", "sub", "sub", "mul", "sub"]
    neg, s1, s2, m, s3 = g.nodes
    assert s1.inputs == [neg.out, g.value("c")]         # (-b) - c
    assert s2.inputs == [g.value("b"), g.value("c")]    # (b - c)
    assert m.inputs[0] is s2.out and m.inputs[1].const == 2.0
    assert s3.inputs == [s1.out, m.out]                 # ((-b) - c) - ((b - c) * 2)


def test_numbers_fold_and_literals_parse():
    g = load_source(HEAD + "output r = a * (1.5e-1 * 2 + 1 / 4)\n").graph
    (n,) = g.nodes
    assert n.op == "mul" and n.inputs[1].const == pytest.approx(0.55)


def test_attributes_lists_symbolic_dims_and_multiline_calls():
    src = """net t
dim B
input x : f32[B, 6]
r = reshape(x,          # newlines inside parentheses are ignored
            shape=[B, 2, -1])
output s = sum(r, axes=[1, 2], keepdims=true)
metric m = mean(r, axes=-1)
"""
    g = load_source(src).graph
    assert g.nodes[0].attrs["shape"] == ("B", 2, -1) and g.nodes[0].out.shape == ("B", 2, 3)
    assert g.nodes[1].attrs == {"axes": (1, 2), "keepdims": True}
    assert g.nodes[1].out.shape == ("B", 1, 1)
    assert list(g.outputs) == ["s", "m"] and g.loss == "s" and g.metrics == ("m",)


# ---- layers ----

LAYERS = """net t
dim B
input x : f32[B, 12]
layer dense(h: f32[N, I], units: int, act: fn = relu, scale: float = 1) -> f32[N, units] {
  param W : f32[I, units] = normal(std=0.01)
  param b : f32[units]    = constant(value=0.5)
  return act(h @ W * scale + b)
}
layer block(h: f32[N, D], hidden: int) -> f32[N, D] {
  u = dense(h, hidden) as up
  return dense(u, units=D, act=id) + h
}
"""


def test_layer_scopes_nest_and_number_automatically():
    g = load_source(LAYERS + "a = block(x, hidden=7) as blk\nb = block(a, 3)\n"
                    "c = dense(dense(b, units=5), units=2, act=tanh)\nloss = mean(c)\n").graph
    assert shapes(g.params) == {
        "blk.up.W": ("f32", (12, 7)), "blk.up.b": ("f32", (7,)),
        "blk.dense0.W": ("f32", (7, 12)), "blk.dense0.b": ("f32", (12,)),
        "block0.up.W": ("f32", (12, 3)), "block0.up.b": ("f32", (3,)),
        "block0.dense0.W": ("f32", (3, 12)), "block0.dense0.b": ("f32", (12,)),
        "dense0.W": ("f32", (12, 5)), "dense0.b": ("f32", (5,)),  # the inner call is built first
        "dense1.W": ("f32", (5, 2)), "dense1.b": ("f32", (2,))}
    assert (g.params[0].init, g.params[0].init_args) == ("normal", {"std": 0.01})
    assert (g.params[1].init, g.params[1].init_args) == ("constant", {"value": 0.5})
    assert g.params[0].loc.line == 5
    scopes = [n.scope for n in g.nodes]
    assert scopes[:4] == ["blk.up"] * 4  # matmul, mul (scale), add, relu in the innermost layer
    assert "blk" in scopes and "block0.dense0" in scopes
    assert [n.op for n in g.nodes if n.scope == "dense1"][-1] == "tanh"
    assert g.outputs["loss"].shape == ()


def test_fn_argument_can_be_a_layer():
    g = load_source(LAYERS + "layer double(h: f32[N, D]) { return h * 2 }\n"
                    "loss = mean(dense(x, units=4, act=double))\n").graph
    assert [(n.op, n.scope) for n in g.nodes][-3:] == [
        ("add", "dense0"), ("mul", "dense0.double0"), ("mean", "")]


def test_bound_dims_are_numbers_in_a_layer():
    g = load_source("dim B\ninput x : f32[B, 12]\nlayer norm(h: f32[N, D]) { return sum(h, axes=1) / D }\n"
                    "loss = mean(norm(x))\n").graph
    assert ops(g) == ["sum", "div", "mean"] and g.nodes[1].inputs[1].const == 12.0


# ---- train block ----

def test_train_defaults_spaces_newlines_and_booleans():
    base = "net t\ninput x : f32[]\noutput y = x * 2\n"
    t = load_source(base).train
    assert (t.optimizer, t.opt_args, t.batch, t.epochs, t.seed, t.data) == ("sgd", {}, 32, 1, 0, None)
    t = load_source(base + "train {\n  optimizer = sgd(lr=0.5, momentum=0.9, nesterov=true)\n\n"
                           "  batch = 10  epochs = 3\n  data = digits\n}\n").train
    assert t.opt_args == {"lr": 0.5, "momentum": 0.9, "nesterov": 1.0}
    assert (t.batch, t.epochs, t.data) == (10, 3, "digits")
    assert (t.locs["batch"].line, t.locs["batch"].col) == (7, 11)
    assert t.locs["optimizer.lr"].line == 5


def test_quoted_data_path_is_relative_to_the_model_file(tmp_path):
    f = tmp_path / "m.net"
    f.write_text('input x : f32[]\noutput y = x\ntrain { optimizer = adam(lr=1e-3) data = "d/train.csv" }\n')
    p = load(f)
    assert p.train.data == str(tmp_path / "d" / "train.csv")
    assert p.train.optimizer == "adam" and p.train.opt_args == {"lr": 1e-3}
    assert p.graph.name == "m" and p.path == str(f)


def test_missing_file():
    with pytest.raises(GraphcError, match="cannot read .*nope.net"):
        load("nope.net")


# ---- errors: exact position and message ----

H = "net t\ndim B\ninput x : f32[B, 784]\ninput y : i32[B]\n"  # 4 lines
DENSE = ("layer dense(h: f32[B, I], units: int) -> f32[B, units] {\n"   # line 5
         "  param W : f32[I, units] = he_normal()\n"
         "  return h @ W\n"
         "}\n")                                                          # line 8

BAD = [
    # syntax
    (H + "loss = mean(x))\n", "5:15", "unexpected ')'; expected end of line"),
    (H + "h = relu(x) +\n", "5:14", "unexpected end of line; expected an expression"),
    (H + "h = relu(\n", "5:10", "unexpected end of file"),
    (H + "h = x $ 2\n", "5:7", "unexpected character '$'"),
    (H + "input z : f32[B,]\n", "5:17", "unexpected ']'"),
    # names and definitions
    (H + "h = relu(xx)\nloss = mean(h)\n", "5:10", "unknown name 'xx'", "did you mean 'x'"),
    (H + "h = reluu(x)\n", "5:5", "unknown function 'reluu'", "did you mean 'relu'"),
    (H + "h = relu(x)\nh = relu(h)\n", "6:1", "'h' is already defined (line 5)"),
    (H + "input x : f32[B]\n", "5:7", "'x' is already defined"),
    (H + "metric a = accuracy(x, y)\n", "1:1", "no loss or output defined"),
    # ops
    (H + "loss = relu(x, x)\n", "5:8", "relu takes 1 tensor argument, got 2"),
    (H + "loss = mean(x, axis=1)\n", "5:16", "mean has no attribute 'axis'", "did you mean 'axes'"),
    (H + "loss = mean(reshape(x))\n", "5:13", "reshape needs the attribute shape"),
    (H + "param W : f32[100, 10] = zeros()\nloss = mean(x @ W)\n", "6:15",
     "matmul: inner dimensions differ: f32[B,784] @ f32[100,10]"),
    (H + "loss = mean(x + y)\n", "5:15", "add: right operand must be a float tensor, got i32[B]"),
    # types and dims
    (H + "input z : f16[B]\n", "5:11", "unknown dtype 'f16'"),
    (H + "input z : f32[N, 3]\n", "5:15", "undefined dim 'N'", "declare it with `dim N`"),
    (H + "param W : i32[3] = zeros()\n", "5:11", "param W must be a float tensor"),
    (H + "param W : f32[3] = gauss()\n", "5:20", "unknown initializer 'gauss'"),
    (H + "input z : f32[3] = 1\n", "5:20", "only scalar inputs take a default"),
    (H + "loss = x\n", "5:1", "loss must be a float scalar, got f32[B,784]"),
    (H + "loss = mean(x) / B\n", "5:18", "'B' is a symbolic dim"),
    # layers
    (H + DENSE + "h = dense(x, units=50) as fc1\nz = dense(h, units=50, ) as fc2\n"
     "loss = mean(dense(x, units=3, bias=1))\n", "11:31", "dense has no parameter 'bias'"),
    (H + DENSE + "layer add2(a: f32[N, D], b: f32[N, D]) { return a + b }\n"
     "h = dense(x, units=100) as fc1\nloss = mean(add2(h, x))\n", "11:21",
     "add2 expects b: f32[N, D] with D bound to 100, got f32[B,784]"),
    (H + DENSE + "loss = mean(dense(y, units=3))\n", "9:19", "dense expects h: f32[B, I], got i32[B]"),
    (H + DENSE + "loss = mean(dense(x))\n", "9:13", "dense is missing the argument 'units'"),
    (H + DENSE + "h = dense(x, units=5) as fc\nloss = mean(dense(h, units=5) as fc)\n", "10:34",
     "layer instance name 'fc' is already used"),
    (H + "layer a(h: f32[B, I]) { return b(h) }\nlayer b(h: f32[B, I]) { return a(h) }\n"
     "loss = mean(a(x))\n", "6:32", "recursive layer call: a -> b -> a"),
    (H + "layer f(h: f32[B, I]) -> f32[B, I] { return mean(h, axes=1) }\nloss = mean(f(x))\n",
     "5:45", "layer f returns f32[B] but declares -> f32[B, I]"),
    (H + "layer f(h: f32[B, I]) {\n  param W : f32[K, 3] = zeros()\n  return h\n}\n"
     "loss = mean(f(x))\n", "6:17", "undefined dim 'K'"),
    (H + "layer f(h: f32[B, I]) {\n  return h\n  z = h\n}\n", "7:3", "a statement after return"),
    (H + "layer f(h: f32[B, I], n: integer) { return h }\n", "5:26", "unknown parameter kind 'integer'"),
    # train block
    (H + "loss = mean(x)\ntrain { optimizer = sgd(lr=0.1)  bach = 5 }\n", "6:34",
     "unknown train key 'bach'", "did you mean 'batch'"),
    (H + "loss = mean(x)\ntrain { optimizer = sdg(lr=0.1) }\n", "6:21", "unknown optimizer 'sdg'"),
    (H + "loss = mean(x)\ntrain { optimizer = sgd(momentum=0.9) }\n", "6:21", "sgd needs a learning rate"),
    (H + "loss = mean(x)\ntrain { optimizer = adam(lr=0.1, momentum=0.9) }\n", "6:34",
     "adam has no argument 'momentum'"),
    (H + "loss = mean(x)\ntrain {\n  batch = -5\n}\n", "7:11",
     "batch must be a positive whole number, got -5"),
    (H + "loss = mean(x)\ntrain { epochs = 0 }\n", "6:18", "epochs must be a positive whole number"),
    (H + "loss = mean(x)\ntrain { schedule = cosin(warmup=5) }\n", "6:20", "unknown schedule 'cosin'",
     "did you mean 'cosine'"),
    (H + "loss = mean(x)\ntrain { schedule = cosine(warmpu=5) }\n", "6:27", "cosine has no argument 'warmpu'",
     "did you mean 'warmup'"),
    (H + "loss = mean(x)\ntrain { schedule = step(gamma=0.5) }\n", "6:20",
     "step needs every=STEPS or every_epochs=EPOCHS"),
    (H + "loss = mean(x)\ntrain { schedule = step(every=5, warmup=9, warmup_epochs=1) }\n", "6:58",
     "give warmup in steps or in epochs, not both"),
    (H + "loss = mean(x)\ntrain { schedule = cosine(warmup=2.5) }\n", "6:34",
     "warmup must be a whole number of steps, got 2.5"),
    (H + "loss = mean(x)\ntrain { schedule = cosine(final=2) }\n", "6:33", "final must be between 0 and 1"),
    (H + "loss = mean(x)\ntrain { schedule = step(every_epochs=0) }\n", "6:38", "every_epochs must be positive"),
    (H + "loss = mean(x)\ntrain { warmup = 100 }\n", "6:9", "unknown train key 'warmup'",
     "schedule arguments go inside the call"),
    (H + "loss = mean(x)\ntrain { clip_norm = -1 }\n", "6:21", "clip_norm must be a positive number"),
    (H + "input total_steps : f32[]\nloss = mean(x)\n", "5:7", "'total_steps' is reserved"),
    (H + "loss = mean(x)\ntrain { optimizer = rmsprop(lr=0.1, beta1=0.9) }\n", "6:37",
     "rmsprop has no argument 'beta1'"),
    (H + "loss = mean(x)\ntrain { seed = 1 }\ntrain { seed = 2 }\n", "7:1", "a second train block"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[2][:40] for c in BAD])
def test_error_is_positioned(case):
    src, where, message, *hint = case
    with pytest.raises(GraphcError) as info:
        load_source(src, "bad.net")
    text = str(info.value)
    head, shown, caret, *rest = text.splitlines()
    assert head.startswith(f"bad.net:{where}: error: {message}"), text
    line, col = map(int, where.split(":"))
    assert shown == "    " + src.splitlines()[line - 1]  # the source line, then a caret under col
    assert caret == "    " + " " * (col - 1) + "^"
    if hint:
        assert rest and rest[0].startswith(f"hint: {hint[0]}"), text


# ---- the language page ----

def test_language_page_op_table_is_the_registrys():
    """The table is generated: `python -m graphc.ops.doc` rewrites it after an op changes."""
    from graphc.ops.doc import op_table
    page = (ROOT / "docs" / "language.md").read_text()
    assert op_table() in page + "\n", "docs/language.md's op table is stale: run python -m graphc.ops.doc"
    assert all(f"| `{name}` |" in page for name in REGISTRY)


def test_tensor_constructors():
    src = ("dim B\ninput x : f32[B, 3]\n"
           "loss = sum(x * full([B, 3], 2.5) + ones([3]) + zeros([B, 1], dtype=f32))\n")
    g = bind(load_source(src, "c.net").graph, {"B": 2})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = compile_graph(gradient_graph(g)).step(x=x)
    assert float(out["loss"]) == pytest.approx(np.sum(x * 2.5 + 1.0))
    np.testing.assert_array_equal(out["d.x"], np.full((2, 3), 2.5, np.float32))


@pytest.mark.parametrize("expr, message", [
    ("full([B, 3])", "full takes a shape and a number"),
    ("zeros(3)", "zeros takes a shape"),
    ("ones([B, 0])", "ones: a dim is a positive whole number or a dim name, got 0"),
    ("zeros([B, 3], dtype=f16)", "unknown name 'f16'"),
    ("zeros([B, 3], dtype=B)", "zeros: dtype must be one of f32, f64, i32"),
    ("full([3], 0.5, dtype=i32)", "full: an i32 tensor holds whole numbers, got 0.5"),
])
def test_tensor_constructor_errors(expr, message):
    with pytest.raises(GraphcError) as e:
        load_source(f"dim B\ninput x : f32[B, 3]\nloss = sum(x) + sum({expr})\n", "c.net")
    assert message in str(e.value) and e.value.loc.line == 3
