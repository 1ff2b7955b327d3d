"""Language-model data, training and generation (issue #19): text as bytes, windows of T bytes fed
by name (x, and y = x shifted by one), epochs of steps drawn at random and resumed exactly,
validation in nats and bits per byte, and `graphc sample`."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.cli import main
from graphc.errors import DataError, GraphcError
from graphc.ir.init import init_params
from graphc.runtime.train import trainer
from graphc.runtime.train.checkpoint import CHECKPOINT, load_arrays
from graphc.runtime.train.data import load_dataset
from graphc.runtime.train.feeds import bind
from graphc.runtime.train.sample import generate, language_model
from graphc.runtime.train.trainer import TrainOptions, TrainingInterrupted, train

ROOT = Path(__file__).resolve().parent.parent
T = 8
TEXT = ("The quick brown fox jumps over the lazy dog. A hacker is a person who enjoys exploring "
        "the details of programmable systems. ") * 12  # 1,488 bytes: 148 validate

# a bigram model: each position's logits from its own byte (causal by construction)
TINY = """net tiny
dim B
input {x} : i32[B, {t}] nograd
input {y} : i32[B, {t2}] nograd
param E : f32[256, 16] = normal(std=0.1)
param W : f32[16, 256] = normal(std=0.1)
logits = gather(E, {x}) @ W
loss = softmax_cross_entropy(logits, {y})
output logits
train {{ optimizer = adam(lr=0.02)  batch = 4  epochs = 2  steps_per_epoch = 5  data = "{data}" }}
"""


def _text(tmp_path: Path, text: str | bytes = TEXT, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    raw = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


def _model(tmp_path: Path, data: str = "corpus.txt", x: str = "x", y: str = "y", t: int = T,
           t2: int | None = None, mapping: str = "") -> Path:
    path = tmp_path / "tiny.net"
    source = TINY.format(x=x, y=y, t=t, t2=t2 or t, data=data)
    path.write_text(source.replace(f'"{data}"', f'"{data}" {mapping}') if mapping else source)
    return path


def _options(out: Path | None = None, **kw) -> TrainOptions:
    return TrainOptions(**{"epochs": 2, "batch": 4, "lr": 0.02, "seed": 0, "optimizer": "adam",
                           "opt_args": {}, "out": out, "progress": False, "threads": 1,
                           "steps_per_epoch": 5, **kw})


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the text source ----

def test_text_is_bytes_split_90_10_with_y_the_next_byte(tmp_path):
    raw = TEXT.encode()
    for name in ("corpus.txt", "corpus.txt.gz"):
        data = load_dataset(_text(tmp_path, name=name))
        assert data.text and data.name == "corpus" and not data.test
        cut = len(raw) - len(raw) // 10
        train_bytes, val_bytes = raw[:cut], raw[cut:]
        assert data.train["x"].tobytes() == train_bytes[:-1] and data.train["y"].tobytes() == train_bytes[1:]
        assert data.validation is not None
        assert data.validation["x"].tobytes() == val_bytes[:-1]
        assert data.validation["y"].tobytes() == val_bytes[1:]


def test_jargon_is_bundled():
    data = load_dataset("jargon")
    assert data.text and data.name == "jargon"
    assert data.validation is not None
    assert (len(data.train["x"]) + 1, len(data.validation["x"]) + 1) == (1_513_636, 168_181)
    assert data.train["x"][:48].tobytes().strip() == b"The Jargon File"


def test_windows_shift_by_one_every_offset_in_training_none_overlapping_in_validation(tmp_path):
    prog = driver.load(_model(tmp_path))
    data = load_dataset(_text(tmp_path))
    g = driver.forward(prog, 4)
    train_ = bind(prog, g, data.train, {}, data.name, "train", text=True)
    raw = np.frombuffer(TEXT.encode(), np.uint8)
    cut = len(raw) - len(raw) // 10
    assert len(train_["x"]) == cut - T  # every window of T + 1 bytes in the training text
    for i in (0, 1, 37, cut - T - 1):
        assert np.array_equal(train_["x"][i], raw[i:i + T])
        assert np.array_equal(train_["y"][i], raw[i + 1:i + T + 1])
    assert data.validation is not None
    val = bind(prog, g, data.validation, {}, data.name, "validation", text=True)
    val_raw = raw[cut:]
    assert len(val["x"]) == (len(val_raw) - 1) // T  # each byte predicted once
    for j in range(len(val["x"])):
        assert np.array_equal(val["x"][j], val_raw[j * T:(j + 1) * T])
        assert np.array_equal(val["y"][j], val_raw[j * T + 1:(j + 1) * T + 1])


def test_inputs_of_other_names_are_mapped_like_arrays(tmp_path, capsys):
    _text(tmp_path)
    code, _, err = _run(capsys, "train", str(_model(tmp_path, x="idx", y="tgt")), "--no-progress")
    assert code == 2 and "no array feeds input idx (i32[B,8]); it holds x, y" in err
    code, out, err = _run(capsys, "train", str(_model(tmp_path, x="idx", y="tgt",
                                                      mapping='{ idx = "x"  tgt = "y" }')), "--no-progress")
    assert code == 0, err
    assert "final: val_loss" in out
    code, out, err = _run(capsys, "train", str(_model(tmp_path, x="idx", y="tgt")), "--no-progress",
                          "--map", "idx=x", "--map", "tgt=y", "--epochs", "1")
    assert code == 0, err


@pytest.mark.parametrize("text,match", [
    (b"", "holds no text"),
    (b"caf\xe9 au lait", r"not UTF-8 text: byte 3 \(line 1\) is 0xe9"),
    (b"line one\nline two \xff", r"byte 18 \(line 2\) is 0xff"),
    (b"short text, long enough to train on but its last tenth is not a window", r"corpus \(validation "
     r"split\): 7 bytes of text, fewer than one window of T \+ 1 = 9 bytes \(input x is i32\[B,8\]; "
     r"the text's last 10% validates\)"),
    (b"tiny", r"corpus \(train split\): 4 bytes of text, fewer than one window of T \+ 1 = 9 bytes"),
])
def test_bad_text_is_refused_clearly(tmp_path, capsys, text, match):
    _text(tmp_path, text)
    code, _, err = _run(capsys, "train", str(_model(tmp_path)), "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert re.search(match, err), err


@pytest.mark.parametrize("declare,match", [
    ("input x : f32[B, 8]\ninput y : i32[B, 8] nograd\nparam E : f32[1, 256] = zeros()\n"
     "logits = reshape(x, shape=[B, 8, 1]) @ E", r"text feeds input x windows of bytes, but it is f32\[B,8\]"),
    ("input x : i32[B] nograd\ninput y : i32[B] nograd\nparam E : f32[256, 256] = zeros()\n"
     "logits = gather(E, x)", r"text feeds input x windows of bytes, but it is i32\[B\]: a language "
     r"model's inputs are i32\[B, T\], T a number"),
])
def test_inputs_that_take_no_windows_are_refused(tmp_path, capsys, declare, match):
    _text(tmp_path)
    path = tmp_path / "bad.net"
    path.write_text(f"net bad\ndim B\n{declare}\nloss = softmax_cross_entropy(logits, y)\n"
                    'train { optimizer = sgd(lr=0.1)  batch = 4  data = "corpus.txt" }\n')
    code, _, err = _run(capsys, "train", str(path), "--no-progress")
    assert code == 2, err
    assert re.search(match, err), err


def test_windows_of_two_lengths_are_refused(tmp_path):
    path = _model(tmp_path, t2=4)
    path.write_text(path.read_text().replace("gather(E, x) @ W", "slice(gather(E, x) @ W, axis=1, start=0, stop=4)"))
    prog = driver.load(path)
    data = load_dataset(_text(tmp_path))
    with pytest.raises(DataError, match=r"x is i32\[B,8\] and y is i32\[B,4\]: a language model's "
                                        "inputs are windows of one length T"):
        bind(prog, driver.forward(prog, 4), data.train, {}, data.name, "train", text=True)


def test_text_has_its_own_validation(tmp_path):
    with pytest.raises(DataError, match="text validates on its last 10%; drop validation"):
        load_dataset(_text(tmp_path), 0.2)


# ---- training ----

def _params(out: Path) -> dict[str, np.ndarray]:
    return load_arrays(out / "params.npz")[0]


def test_training_is_seeded_logs_bits_per_byte_and_has_no_test_split(tmp_path):
    prog, data = driver.load(_model(tmp_path)), load_dataset(_text(tmp_path))
    a = train(prog, data, _options(tmp_path / "a", log=tmp_path / "a.jsonl"), report=lambda s: None)
    b = train(prog, data, _options(tmp_path / "b"), report=lambda s: None)
    assert a == [{**r, "seconds": a[i]["seconds"]} for i, r in enumerate(b)]  # all but the time
    for name, v in _params(tmp_path / "a").items():
        assert np.array_equal(v, _params(tmp_path / "b")[name]), name
    log = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # one record an epoch, none for a test split
    for r in log:
        assert set(r) == {"epoch", "seconds", "train_loss", "val_loss", "val_bpb"}
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
    assert log[1]["val_loss"] < log[0]["val_loss"] < math.log(256)
    meta = load_arrays(tmp_path / "a" / CHECKPOINT)[1]
    assert meta["config"]["steps_per_epoch"] == 5


def _interrupt_at(monkeypatch, call: int) -> list[int]:
    """Ctrl-C (a real SIGINT) as the trainer feeds batch number `call` (from 1); returns the count."""
    calls = [0]
    real = trainer.feeder

    def counting(step, sources):
        feed = real(step, sources)

        def fed(idx):
            calls[0] += 1
            if calls[0] == call:
                os.kill(os.getpid(), signal.SIGINT)
            feed(idx)
        return fed
    monkeypatch.setattr(trainer, "feeder", counting)
    return calls


def test_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    prog, data = driver.load(_model(tmp_path)), load_dataset(_text(tmp_path))
    whole = train(prog, data, _options(tmp_path / "whole"), report=lambda s: None)
    calls = _interrupt_at(monkeypatch, 3)
    with pytest.raises(TrainingInterrupted, match="interrupted at epoch 1, step 3; checkpoint saved"):
        train(prog, data, _options(tmp_path / "cut"), report=lambda s: None)
    meta = load_arrays(tmp_path / "cut" / CHECKPOINT)[1]
    assert (meta["epoch"], meta["step"]) == (1, 3)
    lines: list[str] = []
    resumed = train(prog, data, _options(tmp_path / "cut", resume=tmp_path / "cut"), report=lines.append)
    assert "resumed from" in lines[1] and "at epoch 1, step 3" in lines[1]
    assert calls[0] == 3 + 7  # the batches left: 2 of epoch 1, then 5
    for name, v in _params(tmp_path / "whole").items():
        assert np.array_equal(v, _params(tmp_path / "cut")[name]), name
    assert resumed[-1]["val_loss"] == whole[-1]["val_loss"]
    with pytest.raises(DataError, match="written with steps_per_epoch 5, but this run has steps_per_epoch 6"):
        train(prog, data, _options(tmp_path / "cut", resume=tmp_path / "cut", steps_per_epoch=6),
              report=lambda s: None)


def test_steps_per_epoch_draws_batches_of_array_data_too(tmp_path, monkeypatch):
    prog, data = driver.load(ROOT / "models" / "digits.net"), load_dataset("digits")
    calls = _interrupt_at(monkeypatch, 0)  # counts only
    history = train(prog, data, replace(_options(), optimizer="sgd", lr=0.1, steps_per_epoch=7),
                    report=lambda s: None)
    assert calls[0] == 2 * 7 and [r["epoch"] for r in history] == [1, 2]
    assert "test_accuracy" in history[-1] and "test_bpb" not in history[-1]  # array data: no bpb


def test_steps_per_epoch_in_the_train_block(tmp_path):
    from graphc.frontend import load_source
    model = "net m\ninput x : f32[2]\nloss = sum(x)\n"
    assert load_source(model + "train { steps_per_epoch = 200 }\n").train.steps_per_epoch == 200
    assert load_source(model).train.steps_per_epoch is None  # a shuffled pass (text: 500 steps)
    with pytest.raises(GraphcError, match="steps_per_epoch must be a positive whole number, got 0"):
        load_source(model + "train { steps_per_epoch = 0 }\n")


def test_eval_reports_the_validation_split_of_text(tmp_path, capsys):
    _text(tmp_path)
    model = _model(tmp_path)
    code, out, err = _run(capsys, "train", str(model), "--no-progress", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "data corpus: 1340 train, 148 validation bytes of text" in out
    final = out.strip().splitlines()[-1].split()
    code, out, err = _run(capsys, "eval", str(model), "--params", str(tmp_path / "run" / "params.npz"))
    assert code == 0, err
    assert out.split() == ["val_loss", final[2], "val_bpb", final[4]]


def test_the_python_api_fits_text_with_the_train_blocks_steps(tmp_path):
    import graphc
    _text(tmp_path)
    m = graphc.load(_model(tmp_path), threads=1)
    history = m.fit(tmp_path / "corpus.txt", epochs=1, progress=False, report=lambda s: None)
    assert list(history[0]) == ["epoch", "seconds", "train_loss", "val_loss", "val_bpb"]


def test_plot_draws_validation_loss_and_bits_per_byte():
    pytest.importorskip("matplotlib")
    from graphc.runtime.train.plot import curves
    history = [{"epoch": e, "seconds": 1.0, "train_loss": 3.0 / e, "val_loss": 3.2 / e,
                "val_bpb": 3.2 / e / math.log(2)} for e in (1, 2, 3)]
    loss, bpb = curves(history, "lm").axes
    assert [ln.get_label() for ln in loss.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(loss.get_lines()[1].get_ydata(), [3.2, 1.6, 3.2 / 3])
    (line,) = bpb.get_lines()
    assert line.get_label() == "bpb" and bpb.get_title() == "validation bpb"


# ---- generation ----

def test_sample_is_greedy_at_temperature_0_and_repeats_with_its_seed(tmp_path, capsys):
    _text(tmp_path)
    model = _model(tmp_path)
    assert _run(capsys, "train", str(model), "--no-progress", "--out", str(tmp_path / "run"))[0] == 0
    args = ["sample", str(model), "--params", str(tmp_path / "run" / "params.npz"), "--prompt", "The",
            "--tokens", "40"]
    code, greedy, err = _run(capsys, *args, "--temperature", "0")
    assert code == 0, err
    assert greedy.startswith("The") and len(greedy.encode()) >= 3 + 40 - 3 * 40 // 2
    assert _run(capsys, *args, "--temperature", "0", "--seed", "5")[1] == greedy  # no draws
    seeded = _run(capsys, *args, "--seed", "3")[1]
    assert _run(capsys, *args, "--seed", "3")[1] == seeded
    assert _run(capsys, *args, "--seed", "4")[1] != seeded


def test_sample_reads_the_last_position_of_a_short_window(tmp_path):
    """A prompt shorter than T sits at the window's start; a longer one slides (the last T bytes)."""
    prog = driver.load(_model(tmp_path))
    params = {"E": np.zeros((256, 16), np.float32), "W": np.zeros((16, 256), np.float32)}
    params["E"][2::2, 0], params["E"][1::2, 0] = 1, -1  # byte 0, the padding, scores all alike
    params["W"][0, ord("A")], params["W"][0, ord("B")] = 1, -1  # even -> A (odd) -> B (even) -> A
    assert b"".join(generate(language_model(prog), params, b"ab", 3, temperature=0)) == b"ABA"
    assert b"".join(generate(language_model(prog), params, b"x" * (T + 5) + b"b", 3, temperature=0)) == b"ABA"


@pytest.mark.parametrize("model,match", [
    ("digits.net", r"not a byte-level language model: its prediction reads x : f32\[B,64\]"),
])
def test_sample_refuses_models_that_are_not_byte_level_language_models(model, match):
    prog = driver.load(ROOT / "models" / model)
    with pytest.raises(GraphcError, match=match):
        generate(language_model(prog), init_params(prog.eval_graph.params, 0), b"hi", 3)


def test_sample_refuses_logits_of_another_vocabulary_and_an_empty_prompt(tmp_path):
    path = tmp_path / "small.net"
    path.write_text(TINY.format(x="x", y="y", t=T, t2=T, data="c.txt").replace("16, 256", "16, 128"))
    with pytest.raises(GraphcError, match=r"it predicts logits f32\[1,8,128\]; sampling needs logits \[B, 8, 256\]"):
        language_model(driver.load(path))
    lm = language_model(driver.load(_model(tmp_path)))
    with pytest.raises(GraphcError, match="the prompt is empty"):
        generate(lm, init_params(lm.graph.params, 0), b"", 3)


def test_sample_refuses_a_model_that_reads_later_bytes(tmp_path):
    """A sliding window pads the bytes not yet written: a model whose logits read them is refused."""
    path = tmp_path / "peek.net"
    path.write_text(TINY.format(x="x", y="y", t=T, t2=T, data="c.txt")
                    .replace("logits = gather(E, {x}) @ W".format(x="x"),
                             "logits = (gather(E, x) + sum(gather(E, x), axes=1, keepdims=true)) @ W"))
    lm = language_model(driver.load(path))
    with pytest.raises(GraphcError, match="is not causal: its logits before position 1 change"):
        generate(lm, init_params(lm.graph.params, 0), b"hi", 3)


# ---- README's path ----

@pytest.mark.slow
def test_readme_trains_gpt_on_jargon_and_samples(tmp_path, capsys):
    run = str(tmp_path / "gpt")
    code, out, err = _run(capsys, "train", str(ROOT / "models" / "gpt.net"), "--no-progress",
                          "--epochs", "1", "--steps-per-epoch", "3", "--out", run)
    assert code == 0, err
    assert "data jargon: 1513636 train, 168181 validation bytes of text" in out
    assert "final: val_loss" in out and "val_bpb" in out
    code, out, err = _run(capsys, "sample", str(ROOT / "models" / "gpt.net"), "--params",
                          f"{run}/params.npz", "--prompt", "hacker", "--tokens", "20")
    assert code == 0, err
    assert out.startswith("hacker")
