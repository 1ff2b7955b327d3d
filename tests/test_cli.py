"""The command line end to end, through subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import GRAPHC

pytestmark = pytest.mark.slow  # the full tier (subprocesses): README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
GOLDEN = Path(__file__).resolve().parent / "golden"


def graphc(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(GRAPHC + list(args), capture_output=True, text=True, cwd=cwd or ROOT,
                       env={**os.environ, "COLUMNS": "200"}, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"graphc {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def test_apples_gradients_follow_the_chain_rule(tmp_path):
    out = json.loads(graphc("grad", str(MODELS / "apples.net"), "--json", cwd=tmp_path).stdout)
    # total = (apple * apple_count + orange * orange_count) * tax = (100*5 + 150*3) * 1.08
    assert out["total"] == pytest.approx(1026.0, rel=1e-6)
    assert out["d.apple"] == pytest.approx(5.4, rel=1e-6)          # apple_count * tax
    assert out["d.apple_count"] == pytest.approx(108.0, rel=1e-6)  # apple * tax
    assert out["d.orange"] == pytest.approx(3.24, rel=1e-6)        # orange_count * tax
    assert out["d.orange_count"] == pytest.approx(162.0, rel=1e-6) # orange * tax
    assert out["d.tax"] == pytest.approx(950.0, rel=1e-6)          # the pre-tax total


X23 = np.arange(6.0).reshape(2, 3)
X1145 = np.arange(20.0).reshape(1, 1, 4, 5)
POOLED = np.array([[1, 2, 3, 2, 1], [2, 4, 6, 4, 2], [2, 4, 6, 4, 2], [1, 2, 3, 2, 1]]) / 9


@pytest.mark.parametrize("source,feeds,want", [
    ("input x : f64[2, 3]\nloss = sum(slice(x, axis=1, start=1, stop=2))", {"x": X23},
     {"d.x": [[0, 1, 0], [0, 1, 0]], "loss": 5.0}),
    ("input x : f64[2, 3]\nloss = mean(slice(x, axis=1, start=1, stop=2))", {"x": X23},
     {"d.x": [[0, 0.5, 0], [0, 0.5, 0]]}),
    ("input x : f64[1, 1, 4, 5]\nloss = sum(avg_pool2d(x, kernel=3, stride=1))", {"x": X1145},
     {"d.x": POOLED[None, None]}),
    ("input x : f64[1, 1, 4, 5]\nloss = sum(avg_pool2d(x, kernel=2, stride=2, padding=1))", {"x": X1145},
     {"d.x": np.full((1, 1, 4, 5), 0.25)}),
    ("input x : f64[3, 5]\ninput w : f64[5, 4]\nloss = sum(x @ w)",
     {"x": np.arange(15.0).reshape(3, 5), "w": np.arange(20.0).reshape(5, 4)},
     {"d.x": np.tile(np.arange(20.0).reshape(5, 4).sum(1), (3, 1)),
      "d.w": np.tile(np.arange(15.0).reshape(3, 5).sum(0)[:, None], (1, 4))}),
    ("input x : f64[3, 5]\ninput w : f64[5, 4]\nloss = mean(x @ w * 0.5)",
     {"x": np.ones((3, 5)), "w": np.arange(20.0).reshape(5, 4)},
     {"d.x": np.tile(np.arange(20.0).reshape(5, 4).sum(1), (3, 1)) / 24, "d.w": np.full((5, 4), 3 / 24)}),
    ("input x : f64[2, 3, 6, 5]\ninput w : f64[4, 3, 3, 2]\nloss = sum(conv2d(x, w))",
     {"x": np.ones((2, 3, 6, 5)), "w": np.ones((4, 3, 3, 2))}, {"d.w": np.full((4, 3, 3, 2), 32.0)}),
])
def test_gradients_under_a_plain_sum_or_mean(tmp_path, source, feeds, want):
    """The cotangent reaching the op is a constant (issue #15): it reads through the op's index map
    (zero outside a slice, the window counts of a pooling) and feeds a GEMM as a tensor of ones."""
    (tmp_path / "m.net").write_text(source + "\n")
    sets = []
    for name, value in feeds.items():
        np.save(tmp_path / f"{name}.npy", value)
        sets += ["--set", f"{name}={tmp_path / name}.npy"]
    out = json.loads(graphc("grad", str(tmp_path / "m.net"), *sets, "--json").stdout)
    for name, value in want.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


def test_grad_sets_params_by_name(tmp_path):
    w = np.full((784, 256), 0.001)
    np.save(tmp_path / "w.npy", w)
    base = ["grad", "models/mlp.net", "--set", "x=0.5", "--set", "y=1", "--json"]
    out = json.loads(graphc(*base, "--set", f"fc1.W={tmp_path / 'w.npy'}", "--set", "fc1.b=0.25").stdout)
    # every hidden unit of fc1 sees the same 784 * 0.5 * 0.001 + 0.25, so d.x is the same everywhere
    assert np.ptp(out["d.x"]) == 0 and out["d.x"][0][0] != 0
    np.save(tmp_path / "bad.npy", np.ones((3, 5)))
    p = graphc(*base, "--set", f"fc1.W={tmp_path / 'bad.npy'}", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[0] == "models/mlp.net:9:9: error: param fc1.W (--set) is f32[784,256], given shape [3, 5]"
    p = graphc(*base, "--set", "y=1.5", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "input y (--set) is i32[1]: give non-negative whole numbers (got 1.5)" in p.stderr
    p = graphc(*base, "--set", "y=10", check=False)  # checked as graphc.Model checks labels
    assert p.returncode != 0 and "input y (--set): label 10 of batch sample 0 is out of range" in p.stderr


def test_apples_text_output_and_set():
    text = graphc("grad", "models/apples.net", "--set", "apple_count=2").stdout
    values = {k.strip(): float(v) for k, v in (line.split("=") for line in text.splitlines())}
    assert values["total"] == pytest.approx((100 * 2 + 150 * 3) * 1.08, rel=1e-6)
    assert values["d.apple"] == pytest.approx(2 * 1.08, rel=1e-6)


@pytest.mark.parametrize("model", ["mlp", "twolayer", "digits", "apples"])
def test_forward_ir_matches_golden_file(model):
    text = graphc("ir", f"models/{model}.net").stdout
    assert text == (GOLDEN / f"{model}.forward.ir").read_text()


def test_grad_ir_marks_backward_and_update_nodes():
    text = graphc("ir", "models/mlp.net", "--grad").stdout
    assert "# backward" in text and "# update" in text
    assert "<- vjp" in text
    assert "fc1.W <- " in text  # the in-place update of a param
    # dX of the first layer is never needed (x is an input): DCE happens later, but W's gradient
    # is a transposed matmul written as a flag, never a transpose op
    assert "matmul" in text and "ta=true" in text and "transpose" not in text


def test_fused_and_llvm_stages():
    fused = graphc("ir", "models/mlp.net", "--stage", "fused").stdout
    assert "kernel" in fused and "contract" in fused and "elementwise" in fused
    llvm = graphc("ir", "models/mlp.net", "--stage", "llvm").stdout
    assert "define void @graphc_step" in llvm and "graphc_gemm_f32" in llvm


def test_json_ir_round_trips():
    from graphc.ir.serialize import from_json, to_json
    d = json.loads(graphc("ir", "models/mlp.net", "--grad", "--json").stdout)
    assert d["format"] == "graphc-ir" and d["version"] == 1
    assert to_json(from_json(d)) == d


def test_check_digits_agrees_and_is_fast():
    r = json.loads(graphc("check", "models/digits.net", "--json").stdout)
    assert r["ok"] and r["max_rel_error"] <= 1e-4
    assert {p["name"] for p in r["params"]} >= {"fc1.W", "fc1.b", "fc2.W", "fc2.b"}
    assert all(p["kinks"] == 0 for p in r["params"])  # sigmoid: smooth everywhere, nothing left out
    assert r["speedup"] > 100


def test_train_digits_log_and_eval(tmp_path):
    log, out = tmp_path / "log.jsonl", tmp_path / "run"
    graphc("train", "models/digits.net", "--log", str(log), "--out", str(out), "--no-progress")
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in recs] == list(range(1, len(recs) + 1))
    assert set(recs[0]) >= {"epoch", "seconds", "train_loss", "test_loss", "test_accuracy"}
    assert recs[-1]["test_accuracy"] >= 0.95
    assert recs[-1]["train_loss"] < recs[0]["train_loss"]
    ev = graphc("eval", "models/digits.net", "--params", str(out / "params.npz")).stdout
    acc = float(ev.split("test_accuracy")[1].split()[0])
    assert acc == pytest.approx(recs[-1]["test_accuracy"], abs=1e-4)  # printed to 4 places


def test_short_mnist_training_reaches_real_accuracy(tmp_path):
    log = tmp_path / "log.jsonl"
    graphc("train", "models/mlp.net", "--epochs", "1", "--log", str(log), "--no-progress")
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["test_accuracy"] >= 0.95


def test_compile_writes_artifacts(tmp_path):
    out = tmp_path / "mlp"
    graphc("compile", "models/mlp.net", "-o", str(out))
    for suffix in ("forward.ir", "forward.json", "step.ir", "fused.txt", "ll", "o"):
        assert (out / f"mlp.{suffix}").stat().st_size > 0


def test_user_errors_are_positioned_without_traceback(tmp_path):
    bad = tmp_path / "bad.net"
    bad.write_text("net bad\ndim B\ninput x : f32[B, 4]\nparam W : f32[3, 2] = zeros()\n"
                   "output y = x @ W\n")
    p = graphc("ir", str(bad), check=False)
    assert p.returncode == 2
    assert f"{bad}:5:" in p.stderr and "error:" in p.stderr and "^" in p.stderr
    assert "Traceback" not in p.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    p = graphc("train", "models/mlp.net", "--data", str(tmp_path / "nope"), check=False)
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
