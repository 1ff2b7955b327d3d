"""Data fed by name (issue #18): any model's inputs from NPZ arrays of their names, scaling declared
and stored, shapes checked, validation and early stopping, argmax accuracy, fixed batches, predict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.cli import main
from graphc.ir.init import init_params
from graphc.ops import REGISTRY
from graphc.runtime.train.checkpoint import load_arrays

HEAD = "net {name}\ndim B\n"
TRAIN = 'train {{ optimizer = sgd(lr=0.05)  batch = 4  epochs = 2  data = "{data}" }}\n'

REGRESSION = HEAD + """input x : f32[B, 3]
input y : f32[B, 2] nograd
param W : f32[3, 2] = zeros()
pred = x @ W
loss = mse(pred, y)
metric mae = mae(pred, y)
"""

AUTOENCODER = HEAD + """input x : f32[B, 6] = pixels(255)
param E : f32[6, 2] = xavier_uniform()
param D : f32[2, 6] = xavier_uniform()
recon = tanh(x @ E) @ D
loss = mse(recon, x)
output recon
"""

TWO_INPUTS = HEAD + """input a : f32[B, 3]
input b : f32[B, 2]
input label : i32[B] nograd
param Wa : f32[3, 4] = zeros()
param Wb : f32[2, 4] = zeros()
logits = a @ Wa + b @ Wb
loss = softmax_cross_entropy(logits, label)
metric accuracy = accuracy(logits, label)
"""


def _model(tmp_path: Path, text: str, data: str, name: str = "m") -> Path:
    path = tmp_path / f"{name}.net"
    path.write_text(text.format(name=name) + TRAIN.format(data=data))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


def _train(capsys, model: Path, out: Path, *more: str) -> str:
    code, stdout, err = _run(capsys, "train", str(model), "--no-progress", "--out", str(out), *more)
    assert code == 0, err
    return stdout


def test_regression_trains_from_npz_and_predicts(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = x @ np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 1.5]], np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    model = _model(tmp_path, REGRESSION, "reg.npz")
    out = _train(capsys, model, tmp_path / "run", "--log", str(tmp_path / "log.jsonl"))
    first, last = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert last["test_mae"] < first["test_mae"] and "test_loss" in last  # a regression metric per epoch
    assert "final: test_loss" in out
    for suffix in ("npy", "csv"):
        code, _, err = _run(capsys, "predict", str(model), "--params", str(tmp_path / "run/params.npz"),
                            "--data", str(tmp_path / "reg.npz"), "-o", str(tmp_path / f"p.{suffix}"))
        assert code == 0, err
    pred = np.load(tmp_path / "p.npy")
    params = load_arrays(tmp_path / "run/params.npz")[0]
    np.testing.assert_allclose(pred, x @ params["W"], rtol=1e-5, atol=1e-6)  # every sample, no labels
    csv = (tmp_path / "p.csv").read_text().splitlines()
    assert csv[0] == 'prediction[0],prediction[1]' and len(csv) == 41


def test_autoencoder_without_labels_trains_and_predicts_with_its_stored_scaling(tmp_path, capsys):
    x = np.random.default_rng(1).integers(0, 256, size=(30, 6), dtype=np.uint8)
    np.savez(tmp_path / "ae.npz", x=x)
    model = _model(tmp_path, AUTOENCODER, "ae.npz")
    _train(capsys, model, tmp_path / "run")
    assert load_arrays(tmp_path / "run/params.npz")[1]["scale"] == {"x": 255.0}
    code, _, err = _run(capsys, "predict", str(model), "--params", str(tmp_path / "run/params.npz"),
                        "--data", str(tmp_path / "ae.npz"), "-o", str(tmp_path / "p.npz"))
    assert code == 0, err
    p = load_arrays(tmp_path / "run/params.npz")[0]
    want = np.tanh((x / np.float32(255)) @ p["E"]) @ p["D"]
    np.testing.assert_allclose(np.load(tmp_path / "p.npz")["recon"], want, rtol=1e-4, atol=1e-5)
    # the same params with a model that now declares another scaling: refused, not rescaled
    other = _model(tmp_path, AUTOENCODER.replace("pixels(255)", "pixels(16)"), "ae.npz", "other")
    code, _, err = _run(capsys, "predict", str(other), "--params", str(tmp_path / "run/params.npz"),
                        "--data", str(tmp_path / "ae.npz"), "-o", str(tmp_path / "q.npz"))
    assert code == 2 and "x = pixels(255)" in err and "x = pixels(16)" in err


def test_two_inputs_are_both_fed_by_name_and_mapped(tmp_path, capsys):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 3)).astype(np.float32)
    b = rng.normal(size=(200, 2)).astype(np.float32)
    label = (b[:, 0] > 0).astype(np.int32) * 2 + (b[:, 1] > 0)  # only b tells the class
    np.savez(tmp_path / "two.npz", a=a, feats_b=b, y=label)
    model = tmp_path / "two.net"
    model.write_text(TWO_INPUTS.format(name="two") + 'train { optimizer = sgd(lr=0.5)  batch = 4  '
                     'epochs = 4  data = "two.npz" { b = "feats_b" } }\n')
    out = _train(capsys, model, tmp_path / "run", "--log", str(tmp_path / "log.jsonl"))
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["test_accuracy"] > 0.9, out
    assert np.abs(load_arrays(tmp_path / "run/params.npz")[0]["Wb"]).min() > 0  # b was fed
    code, _, err = _run(capsys, "predict", str(model), "--params", str(tmp_path / "run/params.npz"),
                        "--data", str(tmp_path / "two.npz"), "-o", str(tmp_path / "p.npy"))
    assert code == 0, err
    assert np.load(tmp_path / "p.npy").shape == (200, 4)
    # the same from the command line, with other data: --map replaces the train block's mapping
    np.savez(tmp_path / "other.npz", first=a, second=b, y=label)
    _train(capsys, model, tmp_path / "run2", "--data", str(tmp_path / "other.npz"),
           "--map", "a=first", "--map", "b=second")


def test_a_csv_header_feeds_inputs_by_name_and_its_mismatches_name_both(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
    label = (b[:, 0] > 0).astype(int) * 2 + (b[:, 1] > 0)
    rows = "".join(",".join(f"{v:.6f}" for v in (*ra, *rb)) + f",{l}\n" for ra, rb, l in zip(a, b, label))
    (tmp_path / "two.csv").write_text("a0,a1,a2,b_0,b_1,label\n" + rows)
    model = _model(tmp_path, TWO_INPUTS, "two.csv")
    out = _train(capsys, model, tmp_path / "run", "--epochs", "4", "--lr", "0.5")
    assert "final: test_loss" in out  # a from a0..a2, b from b_0..b_1, label by name
    (tmp_path / "other.csv").write_text("a0,a1,a2,c_0,c_1,label\n" + rows)
    code, _, err = _run(capsys, "train", str(model), "--data", str(tmp_path / "other.csv"), "--no-progress")
    assert code == 2 and "m.net:4:7: error: other (train split): no array feeds input b (f32[B,2]); it " \
        "holds a (columns a0..a2), c (columns c_0..c_1), label (column 6)" in err and "--map b=" in err
    code, _, err = _run(capsys, "train", str(model), "--data", str(tmp_path / "other.csv"), "--map", "b=a",
                        "--no-progress")
    assert code == 2 and "other: array 'a' (columns a0..a2) holds samples of shape [3] but input b " \
        "takes [2] per sample" in err


def test_two_float_inputs_on_a_bundled_set_name_both(tmp_path, capsys):
    model = _model(tmp_path, TWO_INPUTS, "x")
    code, _, err = _run(capsys, "train", str(model), "--data", "digits", "--no-progress")
    assert code == 2 and "input a or input b" in err and "Traceback" not in err


def test_an_input_no_array_feeds_is_refused_at_its_line(tmp_path, capsys):
    np.savez(tmp_path / "half.npz", a=np.zeros((20, 3), np.float32), label=np.zeros(20, np.int32))
    code, _, err = _run(capsys, "train", str(_model(tmp_path, TWO_INPUTS, "half.npz")), "--no-progress")
    assert code == 2 and "no array feeds input b (f32[B,2])" in err and "m.net:4:" in err and "--map b=" in err


def test_tokens_are_fed_unscaled_and_checked_against_the_ops_bound(tmp_path, capsys):
    text = HEAD + """input t : i32[B, 3] nograd
input y : f32[B, 3, 5] nograd
pred = onehot(t, n=5)
param W : f32[5] = zeros()
loss = mse(pred * W, y)
"""
    t = np.random.default_rng(3).integers(0, 5, size=(20, 3))
    np.savez(tmp_path / "tok.npz", t=t, y=np.eye(5, dtype=np.float32)[t])
    model = _model(tmp_path, text, "tok.npz")
    out = _train(capsys, model, tmp_path / "run", "--epochs", "8", "--lr", "2")
    assert float(out.split("final: test_loss ")[1].split()[0]) < 0.05  # ids 0..4 fed as they are
    t[7, 1] = 9
    np.savez(tmp_path / "tok.npz", t=t, y=np.zeros((20, 3, 5), np.float32))
    code, _, err = _run(capsys, "train", str(model), "--no-progress")
    assert code == 2 and "label 9" in err and "onehot here takes 5 classes" in err


def test_float_targets_and_non_whole_labels(tmp_path, capsys):
    np.savez(tmp_path / "r.npz", x=np.zeros((20, 3), np.float32), y=np.full((20, 2), 0.48, np.float32))
    assert _run(capsys, "train", str(_model(tmp_path, REGRESSION, "r.npz")), "--no-progress")[0] == 0
    np.savez(tmp_path / "c.npz", a=np.zeros((20, 3)), b=np.zeros((20, 2)), label=np.full(20, 0.48))
    code, _, err = _run(capsys, "train", str(_model(tmp_path, TWO_INPUTS, "c.npz")), "--no-progress")
    assert code == 2 and "0.48" in err and "non-negative whole numbers" in err


def test_channels_last_images_for_a_channels_first_input_are_refused(tmp_path, capsys):
    text = HEAD + """input x : f32[B, 3, 4, 5]
input y : i32[B] nograd
param W : f32[60, 2] = zeros()
logits = reshape(x, shape=[B, 60]) @ W
loss = softmax_cross_entropy(logits, y)
"""
    np.savez(tmp_path / "nhwc.npz", x=np.zeros((10, 4, 5, 3), np.float32), y=np.zeros(10, np.int32))
    code, _, err = _run(capsys, "train", str(_model(tmp_path, text, "nhwc.npz")), "--no-progress")
    assert code == 2 and "[4, 5, 3]" in err and "channels-last" in err and "np.transpose" in err


def test_pixel_bytes_for_an_unscaled_float_input_say_how_to_declare_it(tmp_path, capsys):
    np.savez(tmp_path / "px.npz", x=np.full((10, 3), 200, np.uint8), y=np.zeros((10, 2), np.float32))
    code, _, err = _run(capsys, "train", str(_model(tmp_path, REGRESSION, "px.npz")), "--no-progress")
    assert code == 2 and "declares no scaling" in err and "input x : f32[B,3] = pixels(255)" in err


def test_bundled_images_feed_a_model_that_names_them_otherwise(tmp_path, capsys):
    text = (Path(__file__).parent.parent / "models/digits.net").read_text()
    model = tmp_path / "d.net"
    model.write_text(re.sub(r"\bx\b", "img", re.sub(r"\by\b", "lab", text)))
    out = _train(capsys, model, tmp_path / "run", "--epochs", "1")
    assert "final: test_loss" in out


def test_validation_early_stopping_and_the_best_params(tmp_path, capsys):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=np.repeat(x[:, :1], 2, axis=1))
    model = _model(tmp_path, REGRESSION, "v.npz")
    out = _train(capsys, model, tmp_path / "run", "--epochs", "30", "--lr", "3", "--validation", "0.2",
                 "--patience", "2", "--log", str(tmp_path / "log.jsonl"))
    assert "early stop" in out and "val_loss" in out
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) < 31 and "test_loss" in records[-1]
    best = min(records[:-1], key=lambda r: r["val_loss"])
    assert load_arrays(tmp_path / "run/params.best.npz")[1]["epoch"] == best["epoch"]
    # the test split is reported with the best params, and with the last ones beside them
    last = records[-2]["epoch"]
    assert records[-1]["best_epoch"] == best["epoch"] < last and "last_test_loss" in records[-1]
    assert f"test, best params (epoch {best['epoch']}): test_loss" in out
    assert f"test, last params (epoch {last}): last_test_loss" in out
    assert f"final (best params, epoch {best['epoch']}): test_loss {records[-1]['test_loss']:.4f}" in out
    code, evaluated, err = _run(capsys, "eval", str(model), "--params", str(tmp_path / "run/params.best.npz"))
    assert code == 0 and evaluated.startswith(f"test_loss {records[-1]['test_loss']:.4f}"), err


def test_the_best_params_and_patience_carry_across_a_resume(tmp_path, capsys):
    """The best validation loss lives in the checkpoint: a run stopped after epoch 3 and resumed
    stops early, keeps params.best.npz and tests as the uninterrupted run does (its best epoch, 2,
    comes before the stop; epoch 4, worse, must not replace it)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, y=np.repeat(x[:, :1], 2, axis=1))
    model = tmp_path / "r.net"
    model.write_text(REGRESSION.format(name="r") + 'train { optimizer = sgd(lr=0.05, momentum=0.9)  '
                     'batch = 4  data = "v.npz"  validation = 0.2  patience = 2 }\n')
    logs = {name: tmp_path / f"{name}.jsonl" for name in ("whole", "parts")}
    whole = _train(capsys, model, tmp_path / "whole", "--epochs", "8", "--log", str(logs["whole"]))
    _train(capsys, model, tmp_path / "parts", "--epochs", "3", "--log", str(logs["parts"]))
    assert load_arrays(tmp_path / "parts/checkpoint.npz")[1]["best"][0] == 2
    resumed = _train(capsys, model, tmp_path / "parts", "--epochs", "8", "--resume", str(tmp_path / "parts"),
                     "--log", str(logs["parts"]))
    records = {k: [{f: v for f, v in json.loads(line).items() if f != "seconds"}
                   for line in v.read_text().splitlines()] for k, v in logs.items()}
    assert [r["epoch"] for r in records["whole"]] == [1, 2, 3, 4, 4]  # stopped early, then the test
    assert records["parts"][:3] + records["parts"][4:] == records["whole"]  # [3]: the first part's test
    assert "early stop: no better validation loss for 2 epochs (best" in resumed and "at epoch 2" in resumed
    assert whole.splitlines()[-1] == resumed.splitlines()[-1]  # final (best params, epoch 2): ...
    for name in ("params.npz", "params.best.npz"):
        a, b = load_arrays(tmp_path / "whole" / name), load_arrays(tmp_path / "parts" / name)
        assert a[1] == b[1] and all(np.array_equal(a[0][k], b[0][k]) for k in a[0])


def test_a_test_file_in_the_train_block_is_the_test_split_and_its_errors_name_it(tmp_path, capsys):
    rng = np.random.default_rng(6)
    for name, n in (("fit", 40), ("held", 9)):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x, y=x[:, :2] * 2)
    model = tmp_path / "t.net"
    model.write_text(REGRESSION.format(name="t") + 'train { optimizer = sgd(lr=0.05)  batch = 4  '
                     'data = "fit.npz"  test = "held.npz" }\n')
    out = _train(capsys, model, tmp_path / "run")
    assert "data fit: 40 train, 9 test samples" in out and "final: test_loss" in out
    final = out.split("final: ")[1].split()[1]
    for more in ([], ["--test", str(tmp_path / "held.npz")]):  # eval reads the block's test file, or --test's
        code, evaluated, err = _run(capsys, "eval", str(model), "--params", str(tmp_path / "run/params.npz"), *more)
        assert code == 0 and evaluated.startswith(f"test_loss {final}"), err
    np.savez(tmp_path / "other.npz", x=np.zeros((9, 3), np.float32))
    code, _, err = _run(capsys, "train", str(model), "--test", str(tmp_path / "other.npz"), "--no-progress")
    assert code == 2 and "other (test split): no array feeds input y (f32[B,2]); it holds x" in err
    bad = tmp_path / "bad.net"
    bad.write_text(REGRESSION.format(name="bad") + "train { test = 2 }\n")
    code, _, err = _run(capsys, "train", str(bad), "--data", str(tmp_path / "fit.npz"))
    assert code == 2 and "bad.net:9:16: error: test must be the fraction of the samples it holds out" in err


def test_patience_without_a_validation_split_is_refused(tmp_path, capsys):
    np.savez(tmp_path / "r.npz", x=np.zeros((20, 3), np.float32), y=np.zeros((20, 2), np.float32))
    code, _, err = _run(capsys, "train", str(_model(tmp_path, REGRESSION, "r.npz")), "--patience", "2")
    assert code == 2 and "patience needs a validation split" in err


def test_a_fixed_batch_model_evaluates_in_its_batches(tmp_path, capsys):
    fixed = REGRESSION.replace("dim B\n", "").replace("[B,", "[4,")
    np.savez(tmp_path / "r.npz", x_train=np.ones((16, 3), np.float32), y_train=np.ones((16, 2), np.float32),
             x_test=np.ones((10, 3), np.float32), y_test=np.ones((10, 2), np.float32))
    model = _model(tmp_path, fixed, "r.npz")
    out = _train(capsys, model, tmp_path / "run")
    assert "2 of 10 test samples left out" in out and "final: test_loss" in out
    code, _, err = _run(capsys, "predict", str(model), "--params", str(tmp_path / "run/params.npz"),
                        "--data", str(tmp_path / "r.npz"), "--map", "x=x_test", "-o", str(tmp_path / "p.npy"))
    assert code == 0, err
    assert np.load(tmp_path / "p.npy").shape == (10, 2)  # the last batch padded


def test_accuracy_counts_a_tie_as_wrong_unless_the_label_is_the_first_max(tmp_path):
    x = np.zeros((8, 4), np.float32)  # all logits equal: argmax is class 0
    y = np.arange(8, dtype=np.int32) % 4
    assert REGISTRY["accuracy"].ref(x, y) == 0.25
    path = tmp_path / "acc.net"
    path.write_text(HEAD.format(name="acc") + "input x : f32[B, 4]\ninput y : i32[B] nograd\n"
                    "metric accuracy = accuracy(x, y)\nloss = softmax_cross_entropy(x, y)\n")
    g = driver.forward(driver.load(path), 8)
    out = driver.compile_graph(g, init_params(g.params, 0)).step.run(x=x, y=y)
    assert float(out["accuracy"]) == 0.25
    x[:, 2] = 1.0  # a later max wins over the tie
    assert float(driver.compile_graph(g, {}).step.run(x=x, y=y)["accuracy"]) == 0.25


def test_mae_op_value_and_gradient(tmp_path):
    p, t = np.array([[1.0, -2.0, 0.5]]), np.array([[0.0, 1.0, 0.5]])
    assert REGISTRY["mae"].ref(p, t) == pytest.approx(4.0 / 3)
