"""Faults during training: a non-finite loss (stop or skip), checkpoints, resuming after SIGKILL
bit for bit, and Ctrl-C.

The in-process tests train the digits net on the bundled digits with one poisoned sample; the
subprocess tests kill or interrupt a real `graphc train` of mlp.net on MNIST (long enough steps to
be caught mid-epoch) and compare against an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import GRAPHC
from graphc import driver
from graphc.errors import DataError, GraphcError
from graphc.runtime.train.checkpoint import CHECKPOINT, Rollback, load_arrays
from graphc.runtime.train.data import load_dataset
from graphc.ir.init import init_params
from graphc.runtime.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
SEED, BATCH, POISONED = 0, 32, 500


@pytest.fixture(scope="module")
def digits():
    return driver.load(ROOT / "models" / "digits.net"), load_dataset("digits")


def options(out: Path | None, **kw) -> TrainOptions:
    return TrainOptions(**{"epochs": 1, "batch": BATCH, "lr": 0.1, "seed": SEED, "optimizer": "sgd",
                           "opt_args": {"momentum": 0.9}, "out": out, "progress": False, **kw})


def poisoned(data):
    """The data set with one training sample's features set to Inf (the loaders refuse such files,
    so it is built here), and the step of epoch 1 whose batch holds it."""
    x = data.train["x"].astype(np.float32)  # the model scales them: pixels(16)
    x[POISONED] = np.inf
    position = int(np.flatnonzero(np.random.default_rng(SEED + 1).permutation(len(x)) == POISONED)[0])
    assert position < len(x) // BATCH * BATCH  # not in the dropped remainder
    return replace(data, train={**data.train, "x": x}), position // BATCH + 1


def test_nonfinite_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(digits, tmp_path):
    prog, data = digits
    bad, step = poisoned(data)
    with pytest.raises(GraphcError) as info:
        train(prog, bad, options(tmp_path, checkpoint_every=1), report=lambda s: None)
    assert str(info.value).startswith(
        f"error: loss became nan at epoch 1, step {step}; training stopped; the last checkpoint, "
        f"{tmp_path / CHECKPOINT} (at epoch 1, step {step - 1}), is good: continue with --resume {tmp_path}")
    assert "--on-nonfinite skip" in info.value.hint
    arrays, meta = load_arrays(tmp_path / CHECKPOINT)
    assert (meta["epoch"], meta["step"]) == (1, step - 1)
    assert all(np.isfinite(a).all() for k, a in arrays.items() if k.startswith(("params/", "state/")))


def test_skip_undoes_the_bad_batch_and_trains_on(digits, tmp_path):
    prog, data = digits
    bad, _ = poisoned(data)
    history = train(prog, bad, options(tmp_path, epochs=2, on_nonfinite="skip"), report=lambda s: None)
    assert [r["skipped_batches"] for r in history] == [1, 1]  # the poisoned sample, once per epoch
    assert np.isfinite(history[-1]["train_loss"]) and history[-1]["test_accuracy"] > 0.8
    arrays, _ = load_arrays(tmp_path / "params.npz")
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_rollback_restores_params_and_optimizer_state_exactly(digits):
    prog, _ = digits
    g = driver.train_graph(prog, 5)
    step = driver.compile_graph(g, init_params(g.params, 0), threads=1).step
    rng = np.random.default_rng(1)
    feeds = {"x": rng.random((5, 64), dtype=np.float32), "y": np.arange(5, dtype=np.int32), "lr": 0.1}
    step(**feeds)  # non-zero momentum state
    live = {**step.params, **step.state}
    before = {k: v.copy() for k, v in live.items()}
    rollback = Rollback(live)
    rollback.take()
    step(**{**feeds, "x": np.full((5, 64), np.inf, np.float32)})
    assert not np.isfinite(step.params["fc1.W"]).all()
    rollback.undo()
    for k, v in before.items():
        assert np.array_equal(live[k], v), k


def test_checkpoint_holds_the_whole_run_and_needs_no_pickle(digits, tmp_path):
    prog, data = digits
    train(prog, data, options(tmp_path, checkpoint_every=10), report=lambda s: None)
    with np.load(tmp_path / CHECKPOINT, allow_pickle=False) as npz:
        names = set(npz.files)
    assert {"params/fc1.W", "params/fc2.b", "state/fc1.W.velocity", "__meta__"} <= names
    arrays, meta = load_arrays(tmp_path / CHECKPOINT)
    assert (meta["epoch"], meta["step"]) == (2, 0)  # after epoch 1: epoch 2 is next, from its start
    assert meta["rng"]["bit_generator"] == "PCG64"
    assert meta["config"]["batch"] == BATCH and meta["config"]["samples"] == len(data.train["x"])


def test_resume_refuses_other_settings_and_missing_checkpoints(digits, tmp_path):
    prog, data = digits
    train(prog, data, options(tmp_path), report=lambda s: None)
    with pytest.raises(DataError, match="written with batch 32, but this run has batch 16"):
        train(prog, data, replace(options(tmp_path, resume=tmp_path), batch=16), report=lambda s: None)
    with pytest.raises(DataError, match="no checkpoint to resume from"):
        train(prog, data, options(tmp_path / "empty", resume=tmp_path / "empty"), report=lambda s: None)


# ---- a real `graphc train`, killed and interrupted ----

RUN = ["models/mlp.net", "--epochs", "2", "--threads", "1", "--no-progress"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(GRAPHC + ["train", *RUN, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def wait_for_checkpoint(out: Path, p: subprocess.Popen) -> dict:
    """The first mid-epoch checkpoint's metadata, as soon as it exists."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert p.poll() is None, finish(p)
        if (out / CHECKPOINT).exists():
            meta = load_arrays(out / CHECKPOINT)[1]
            if meta["step"] > 0:
                return meta
        time.sleep(0.005)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    code, _, err = finish(start("--out", str(out), "--log", str(out / "log.jsonl")))
    assert code == 0, err
    return out


def assert_same_run(out: Path, reference: Path) -> None:
    got, _ = load_arrays(out / "params.npz")
    want, _ = load_arrays(reference / "params.npz")
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    # the last epoch's mean training loss covers steps from before and after the break
    last = lambda p: json.loads((p / "log.jsonl").read_text().splitlines()[-1])["train_loss"]
    assert last(out) == last(reference)


def test_run_killed_mid_epoch_resumes_bit_for_bit(uninterrupted, tmp_path):
    p = start("--out", str(tmp_path), "--log", str(tmp_path / "log.jsonl"), "--checkpoint-every", "25")
    wait_for_checkpoint(tmp_path, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    meta = load_arrays(tmp_path / CHECKPOINT)[1]
    assert meta["epoch"] == 1 and 0 < meta["step"] < 468  # killed inside the first epoch
    code, out, err = finish(start("--resume", str(tmp_path), "--log", str(tmp_path / "log.jsonl")))
    assert code == 0, err
    assert f"resumed from {tmp_path / CHECKPOINT} at epoch 1, step {meta['step']}" in out
    assert_same_run(tmp_path, uninterrupted)


def test_ctrl_c_saves_a_checkpoint_and_exits_with_one_line(uninterrupted, tmp_path):
    p = start("--out", str(tmp_path), "--log", str(tmp_path / "log.jsonl"), "--checkpoint-every", "25")
    wait_for_checkpoint(tmp_path, p)
    p.send_signal(signal.SIGINT)
    code, _, err = finish(p)
    meta = load_arrays(tmp_path / CHECKPOINT)[1]
    assert code == 130
    assert err.strip().splitlines() == [
        f"interrupted at epoch {meta['epoch']}, step {meta['step']}; checkpoint saved to "
        f"{tmp_path / CHECKPOINT}: continue with --resume {tmp_path}"]
    code, _, err = finish(start("--resume", str(tmp_path), "--log", str(tmp_path / "log.jsonl")))
    assert code == 0, err
    assert_same_run(tmp_path, uninterrupted)
