"""ONNX export: onnxruntime runs the exported models and every mapped op and agrees with graphc."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from graphc import driver  # noqa: E402
from graphc.api import Model  # noqa: E402
from graphc.autodiff.graphs import inference_graph  # noqa: E402
from graphc.errors import GraphcError  # noqa: E402
from graphc.export.onnx import EMITTERS, NOT_EXPORTABLE, OPSET, to_onnx  # noqa: E402
from graphc.frontend import load_source  # noqa: E402
from graphc.ir.bind import bind  # noqa: E402
from graphc.ir.graph import Builder, Graph, Input, TensorType, Value  # noqa: E402
from graphc.ops import REGISTRY  # noqa: E402
from graphc.ops.reference import evaluate  # noqa: E402
from graphc.runtime.train.checkpoint import save_arrays  # noqa: E402
from graphc.ir.init import init_params  # noqa: E402
from test_cli import graphc  # noqa: E402
from test_ops import ALL, build, feeds_for, ref  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "models"


def run(model: "onnx.ModelProto", **feeds: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def perturbed_arrays(prog, seed: int = 0) -> dict[str, np.ndarray]:
    """Initialized params plus noise, so zero biases cannot hide a dropped add, and state (batch
    norm's running statistics) drawn in [0.5, 1.5), so it cannot hide being ignored either."""
    rng = np.random.default_rng(seed)
    g = prog.eval_graph
    arrays = {k: (v + rng.normal(0, 0.1, v.shape)).astype(v.dtype)
              for k, v in init_params(g.params, seed).items()}
    return arrays | {s.value.name: rng.uniform(0.5, 1.5, s.value.shape).astype(np.float32) for s in g.state}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "twolayer", "lenet", "mlp_bn"])
def test_onnxruntime_agrees_with_graphc(model):
    prog = driver.load(MODELS / f"{model}.net")
    arrays = perturbed_arrays(prog)
    exported = to_onnx(prog.eval_graph, arrays)
    x = np.random.default_rng(1).uniform(0, 1, (7, 784)).astype(np.float32)  # pixels in [0, 1]
    evaluation = inference_graph(driver.forward(prog, 7, training=False))
    want = driver.compile_graph(evaluation, arrays).step.run(x=x)["logits"]
    (got,) = run(exported, x=x)
    assert got.shape == (7, 10)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the batch dim is symbolic: the same model runs 3 samples
    (three,) = run(exported, x=x[:3])
    np.testing.assert_allclose(three, want[:3], rtol=1e-5, atol=1e-5)


# a one-block causal transformer: token embedding (gather) plus positions, layer norms, two-head
# attention ([B, heads, T, T] scores, a causal mask from iota and gt, softmax over the last axis),
# a gelu MLP (exact, then the tanh form) and residual adds
TINY_LM = """
net tiny_lm
dim B
input tok : i32[B, 6]
input y : i32[B, 6]
param emb : f32[11, 8] = normal(std=0.5)
param pos : f32[6, 8] = normal(std=0.1)
param Wq : f32[8, 8] = xavier_uniform()
param Wk : f32[8, 8] = xavier_uniform()
param Wv : f32[8, 8] = xavier_uniform()
param Wo : f32[8, 8] = xavier_uniform()
param W1 : f32[8, 16] = xavier_uniform()
param W2 : f32[16, 8] = xavier_uniform()
param Wout : f32[8, 11] = xavier_uniform()

layer heads(h: f32[B, 6, 8], W: f32[8, 8]) -> f32[B, 2, 6, 4] {
  return transpose(reshape(h @ W, shape=[B, 6, 2, 4]), perm=[0, 2, 1, 3])
}

h = gather(emb, tok) + pos
a = layer_norm(h) as ln1
s = matmul(heads(a, Wq), heads(a, Wk), tb=true) * 0.5
future = gt(iota(s, axis=3), iota(s, axis=2))
att = softmax(where(future, -1e9, s), axis=-1)
o = reshape(transpose(att @ heads(a, Wv), perm=[0, 2, 1, 3]), shape=[B, 6, 8])
h2 = h + o @ Wo
h3 = h2 + gelu(gelu(layer_norm(h2) as ln2 @ W1) @ W2, tanh=true)
logits = layer_norm(h3) as lnf @ Wout
loss = softmax_cross_entropy(logits, y)
"""


@pytest.mark.slow
def test_transformer_block_runs_alike_in_onnxruntime():
    prog = load_source(TINY_LM, "tiny_lm.net")
    arrays = perturbed_arrays(prog)
    exported = to_onnx(prog.eval_graph, arrays)
    assert {"Gather", "Erf", "Where", "Softmax", "MatMul", "Transpose"} <= {n.op_type for n in exported.graph.node}
    tok = np.random.default_rng(1).integers(0, 11, (5, 6)).astype(np.int32)
    want = driver.compile_graph(inference_graph(driver.forward(prog, 5, training=False)), arrays).step.run(tok=tok)
    (got,) = run(exported, tok=tok)
    np.testing.assert_allclose(got, want["logits"], rtol=1e-5, atol=1e-5)
    later = tok.copy()
    later[:, 4:] = (later[:, 4:] + 1) % 11  # the mask is causal: earlier positions do not see it
    (changed,) = run(exported, tok=later)
    np.testing.assert_array_equal(changed[:, :4], got[:, :4])
    assert not np.allclose(changed[:, 4:], got[:, 4:])


def _rnn_scans() -> Graph:
    """Every result of two scans of one RNN cell over a batch of B: carries h [B, 4] and a running
    sum [4], a step x [B, 3], the weights w [3, 4] (a loop invariant); per-step values h and h times
    the h before. One scan runs forwards, one backwards; the sum starts from a literal, a new one for
    each result (as the frontend and rewrites make them), and the cell clips h at a literal [B, 4]."""
    F = lambda *s: TensorType("f32", s)
    cell = Graph("cell")
    h, acc, x, w = (Value(n, t) for n, t in (("h", F("B", 4)), ("acc", F(4)), ("x", F("B", 3)), ("w", F(3, 4))))
    cell.inputs = [Input(v) for v in (h, acc, x, w)]
    b = Builder(cell)
    new = b.maximum(b.tanh(b.add(b.mul(h, 0.5), b.matmul(x, w))), b.const(-0.9, "f32", ("B", 4)))
    cell.outputs = {"h": new, "acc": b.add(acc, b.sum(new, axes=0)), "y0": new, "y1": b.mul(new, h)}
    g = Graph("scans")
    h0, xs, w = Value("h0", F("B", 4)), Value("xs", F(5, "B", 3)), Value("w", F(3, 4))
    g.inputs = [Input(v) for v in (h0, xs, w)]
    b = Builder(g)
    g.outputs = {f"{way}{r}": b.op("scan", h0, b.const(0.0, "f32", (4,)), xs, w, body=cell, carries=2,
                                   reverse=way == "back", result=r)
                 for way in ("fwd", "back") for r in range(4)}
    return g


def test_scan_results_are_one_onnx_scan():
    g = _rnn_scans()
    exported = to_onnx(g, {})
    scans = [n for n in exported.graph.node if n.op_type == "Scan"]
    assert [len(n.output) for n in scans] == [4, 4]  # 2 final carries, 2 stacked per-step values
    rng = np.random.default_rng(0)
    feeds = {"h0": rng.normal(size=(3, 4)), "xs": rng.normal(size=(5, 3, 3)), "w": rng.normal(size=(3, 4))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    got = dict(zip(g.outputs, run(exported, **feeds)))
    want = dict(zip(g.outputs, evaluate(bind(g, {"B": 3}), list(feeds.values()))))
    compiled = driver.compile_graph(inference_graph(bind(g, {"B": 3}))).step.run(**feeds)
    assert not np.allclose(want["fwd2"], want["back2"])  # the directions differ
    for k in g.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(got[k], compiled[k], rtol=1e-5, atol=1e-5, err_msg=k)
    # the batch dim is symbolic inside the body too
    two = run(exported, h0=feeds["h0"][:2], xs=feeds["xs"][:, :2], w=feeds["w"])
    np.testing.assert_allclose(two[2], want["fwd2"][:, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_lstm_exports_and_runs_alike_in_onnxruntime(tmp_path):
    """models/lstm.net (an embedding, a scan of an LSTM cell over 64 bytes, the output layer), as
    `graphc export` writes it, against graphc's predictions."""
    m = Model(driver.load(MODELS / "lstm.net"), batch=4, seed=0)
    for k, v in perturbed_arrays(m.program).items():
        m.params[k][...] = v
    m.save(tmp_path / "params.npz")
    graphc("export", "models/lstm.net", "--params", str(tmp_path / "params.npz"), "-o", str(tmp_path / "lstm.onnx"))
    exported = onnx.load(tmp_path / "lstm.onnx")
    assert [n.op_type for n in exported.graph.node].count("Scan") == 1
    x = np.random.default_rng(1).integers(0, 256, (6, 64)).astype(np.int32)
    want = m.predict(x=x)["logits"]
    (got,) = run(exported, x=x)
    assert got.shape == (6, 64, 256)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (two,) = run(exported, x=x[:2])
    np.testing.assert_allclose(two, want[:2], rtol=1e-4, atol=1e-4)


def test_signature_is_the_inference_graph():
    prog = driver.load(MODELS / "mlp.net")
    m = to_onnx(prog.eval_graph, init_params(prog.eval_graph.params, 0))
    assert [o.opset_import[0].version for o in [m]] == [OPSET]
    (inp,) = m.graph.input  # the labels are gone: only the loss read them
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "x" and dims == ["B", 784] and "[0, 1]" in inp.doc_string
    (out,) = m.graph.output
    assert out.name == "logits"
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["B", 10]
    assert {i.name for i in m.graph.initializer} >= {"fc1.W", "fc1.b", "out.W", "out.b"}
    assert not {"SoftmaxCrossEntropyLoss", "ArgMax"} & {n.op_type for n in m.graph.node}


# every op with an ONNX mapping, on the registry's own test cases, against its NumPy reference
MAPPED = [(n, i, c) for n, i, c in ALL if n in EMITTERS]


def test_mapping_table_names_registered_ops():
    """Every op is exported or listed as not exportable (with the reason in onnx.py), not both."""
    assert set(EMITTERS) | NOT_EXPORTABLE == set(REGISTRY) and not set(EMITTERS) & NOT_EXPORTABLE
    assert {"matmul", "add", "relu", "sigmoid", "conv2d", "max_pool2d", "reshape"} <= set(EMITTERS)


@pytest.mark.parametrize("name,i,case", MAPPED, ids=[f"{n}-{i}" for n, i, _ in MAPPED])
def test_each_mapped_op_matches_its_reference(name, i, case):
    types, attrs = case
    xs, _ = feeds_for(name, types, attrs)
    g = bind(build(name, types, attrs), {}, "f32")
    feeds = {f"x{j}": x.astype(np.float32 if t.is_float else np.int32)
             for j, (x, t) in enumerate(zip(xs, types))}
    (got,) = run(to_onnx(g, {}), **feeds)
    np.testing.assert_allclose(got, ref(name, list(feeds.values()), attrs), rtol=2e-5, atol=2e-5)


def test_unmapped_op_is_named_with_its_position():
    prog = load_source("net m\ndim B\ninput x : f32[B, 3]\ninput y : i32[B]\nparam W : f32[3, 4] = zeros()\n"
                       "logits = x @ W\noutput hits = accuracy(logits, y)\n", "m.net")
    with pytest.raises(GraphcError, match=r"m.net:7:\d+: error: op accuracy has no ONNX mapping"):
        to_onnx(prog.graph, init_params(prog.graph.params, 0))


def test_cli_exports_saved_params(tmp_path):
    prog = driver.load(MODELS / "twolayer.net")
    params = perturbed_arrays(prog, seed=3)
    save_arrays(tmp_path / "params.npz", params)
    out = graphc("export", "models/twolayer.net", "--params", str(tmp_path / "params.npz"),
                 "-o", str(tmp_path / "twolayer.onnx")).stdout
    assert "twolayer.onnx" in out and "logits" in out
    x = np.random.default_rng(2).uniform(0, 1, (5, 784)).astype(np.float32)
    (got,) = run(onnx.load(tmp_path / "twolayer.onnx"), x=x)
    np.testing.assert_allclose(got, run(to_onnx(prog.eval_graph, params), x=x)[0], rtol=0, atol=0)
    bad = graphc("export", "models/mlp.net", "--params", str(tmp_path / "params.npz"),
                 "-o", str(tmp_path / "mlp.onnx"), check=False)
    assert bad.returncode == 2 and "param fc1.W missing" in bad.stderr
