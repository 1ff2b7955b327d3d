"""Hostile and unlucky inputs (issue 17): each test is a case that once crashed, hung, ran foreign
code or gave a silently wrong result, and must now end cleanly."""

from __future__ import annotations

import ctypes
import errno
import gzip
import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

from conftest import GRAPHC
from graphc import cli, driver
from graphc.codegen.jit import compile_cached
from graphc.codegen.target import host_target
from graphc.errors import DataError, GraphcError
from graphc.frontend import load_source
from graphc.runtime.train import checkpoint, trainer
from graphc.runtime.train import data as data_module
from graphc.runtime.train.feeds import bind
from graphc.artifacts import SHARED_SUFFIX, write_artifacts
from graphc.runtime.train.checkpoint import CHECKPOINT
from graphc.runtime.train.trainer import train
from test_capi import Library as CLibrary, needs_cc
from test_faults import digits, options  # noqa: F401 (digits is a fixture)

ROOT = Path(__file__).resolve().parent.parent


# --- the object cache (issue 17, items 1 and 2) ---------------------------------------------------

def _tiny(value: int) -> ir.Module:
    """A module whose `f` returns `value`: objects that differ in what they compute."""
    mod = ir.Module(name=f"tiny{value}")
    f = ir.Function(mod, ir.FunctionType(ir.IntType(64), []), name="f")
    ir.IRBuilder(f.append_basic_block()).ret(ir.Constant(ir.IntType(64), value))
    return mod


def _run_tiny(key: str, value: int) -> tuple[int, bool]:
    """(what the object for `key` computes, whether it came from the cache)."""
    native, hit = compile_cached(key, lambda: _tiny(value), host_target())
    return ctypes.CFUNCTYPE(ctypes.c_int64)(native.address("f"))(), hit


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache directory (not yet created)."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(path))
    return path


def _entry(cache: Path, key: str) -> Path:
    return cache / f"{key}.o"


def test_cache_dir_is_private_whatever_the_umask(tmp_path, monkeypatch):
    path = tmp_path / "home" / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(path))
    old = os.umask(0)
    try:
        assert _run_tiny("a" * 64, 1) == (1, False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(_entry(path, "a" * 64).stat().st_mode) == 0o600


def test_shared_cache_dir_is_refused(cache, capfd):
    key = "b" * 64
    _run_tiny(key, 1)
    cache.chmod(0o777)  # anyone could have put this entry here
    assert _run_tiny(key, 1) == (1, False)
    assert _run_tiny("c" * 64, 2) == (2, False)
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and "writable by" in err and str(cache) in err
    assert not _entry(cache, "c" * 64).exists()  # nothing written into it either


@pytest.mark.parametrize("tamper", ["group-writable", "other owner", "symlink", "too large"])
def test_untrusted_cache_entry_is_refused(cache, tamper, tmp_path, capfd):
    key = "d" * 64
    _run_tiny(key, 1)
    entry = _entry(cache, key)
    if tamper == "group-writable":
        entry.chmod(0o660)
    elif tamper == "other owner":
        if os.geteuid() != 0:
            pytest.skip("changing a file's owner needs root")
        os.chown(entry, 12345, -1)
    elif tamper == "symlink":  # to a valid entry elsewhere: in a directory someone else may write
        elsewhere = tmp_path / "elsewhere.o"
        entry.rename(elsewhere)
        entry.symlink_to(elsewhere)
    else:
        with entry.open("r+b") as f:
            f.truncate(1 << 30)  # sparse: reading it all would cost a GiB
    assert _run_tiny(key, 1) == (1, False)
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and entry.name in err
    assert _run_tiny(key, 1) == (1, True)  # replaced by our own entry


def test_fifo_cache_entry_does_not_hang(cache):
    key = "e" * 64
    cache.mkdir(mode=0o700)
    os.mkfifo(_entry(cache, key), 0o600)
    script = (f"import ctypes, sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
              f"from test_hostile import _run_tiny; print(_run_tiny('{key}', 7))")
    done = subprocess.run([sys.executable, "-c", script], cwd=cache.parent, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "GRAPHC_CACHE_DIR": str(cache)})
    assert done.returncode == 0 and done.stdout.strip() == "(7, False)"
    assert "not a regular file" in done.stderr


def test_cache_entry_of_another_key_is_not_run(cache):
    a, b = "1" * 64, "2" * 64
    _run_tiny(a, 1)
    _run_tiny(b, 2)
    shutil.copyfile(_entry(cache, a), _entry(cache, b))  # valid checksum, wrong code
    assert _run_tiny(b, 2) == (2, False)
    assert _run_tiny(b, 2) == (2, True)


@pytest.mark.parametrize("env", [{"GRAPHC_CACHE_DIR": "/dev/null/x"},
                                 {"GRAPHC_CACHE_DIR": "", "HOME": "/dev/null"}])
def test_unusable_cache_does_not_stop_a_compile(env, tmp_path):
    done = subprocess.run([*GRAPHC, "grad", str(ROOT / "models/apples.net")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    assert "5.4" in done.stdout
    assert done.stderr.count("warning:") == 1 and "object cache" in done.stderr
    assert "Traceback" not in done.stderr


def test_failing_cache_write_warns_once(cache, monkeypatch, capfd):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    _run_tiny("f" * 64, 1)  # the directory exists: putting an entry in place is what fails
    monkeypatch.setattr(os, "replace", read_only)
    assert _run_tiny("3" * 64, 3) == (3, False)
    assert _run_tiny("4" * 64, 4) == (4, False)
    monkeypatch.undo()
    err = capfd.readouterr().err
    assert err.count("warning:") == 1 and "Read-only file system" in err
    assert sorted(p.name for p in cache.iterdir()) == ["f" * 64 + ".o"]  # no temporary left


def test_cache_evicts_least_recently_used(cache, monkeypatch):
    keys = [f"{i}" * 64 for i in range(5, 9)]
    for i, key in enumerate(keys[:3]):
        _run_tiny(key, i)
        os.utime(_entry(cache, key), (1000 + i, 1000 + i))  # 5 oldest, then 6, then 7
    size = _entry(cache, keys[0]).stat().st_size
    assert _run_tiny(keys[0], 0) == (0, True)  # a hit makes 5 the most recently used
    monkeypatch.setenv("GRAPHC_CACHE_MAX_BYTES", str(3 * size))
    _run_tiny(keys[3], 3)
    assert sorted(p.name[0] for p in cache.iterdir()) == ["5", "7", "8"]
    assert sum(p.stat().st_size for p in cache.iterdir()) <= 3 * size


def test_cache_command_shows_and_clears(cache, capsys):
    for i in range(3):
        _run_tiny(f"{i}" * 64, i)
    size = sum(p.stat().st_size for p in cache.iterdir())
    (cache / "notes.txt").write_text("not graphc's")
    assert cli.main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and "3 entries" in out and f"{size} bytes" in out
    assert cli.main(["cache", "--clear"]) == 0
    assert f"removed 3 entries ({size} bytes)" in capsys.readouterr().out
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]
    assert _run_tiny("0" * 64, 0) == (0, False)


# --- run directories and checkpoints (issue 17, items 4, 5, 7 and 12) ----------------------------

class _Killed(BaseException):
    """A SIGKILL stand-in raised inside a write: nothing in graphc catches it."""


def _watch_writes(monkeypatch, kill_at: int | None = None) -> list[Path]:
    """The files save_arrays writes from now on (params and checkpoints), filled in as they are
    written; the kill_at-th (0-based) dies before writing anything."""
    real, calls = checkpoint.save_arrays, []

    def watched(path, *args, **kwargs):
        calls.append(path)
        if len(calls) - 1 == kill_at:
            raise _Killed(path)
        return real(path, *args, **kwargs)
    for module in (checkpoint, trainer):
        monkeypatch.setattr(module, "save_arrays", watched)
    return calls


def _train(prog, data, out: Path | None, **kw) -> list[dict]:
    return train(prog, data, options(out, **kw), report=lambda s: None)


def _same_arrays(a: Path, b: Path) -> bool:
    (x, mx), (y, my) = checkpoint.load_arrays(a), checkpoint.load_arrays(b)
    return mx == my and x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("last", [2, 1])
def test_kill_in_the_final_epochs_last_writes_loses_nothing(digits, tmp_path, monkeypatch, last):
    """A run ends with two writes, params.npz and the checkpoint: killed just before either, its
    resume must end with the final params in params.npz (once, it printed "params saved" over a
    params.npz an epoch behind)."""
    prog, data = digits
    reference = tmp_path / "reference"
    with pytest.MonkeyPatch.context() as mp:
        writes = _watch_writes(mp)
        _train(prog, data, reference, epochs=2)
    run = tmp_path / "run"
    _watch_writes(monkeypatch, len(writes) - last)
    with pytest.raises(_Killed):
        _train(prog, data, run, epochs=2)
    monkeypatch.undo()
    _train(prog, data, run, epochs=2, resume=run)
    assert _same_arrays(run / "params.npz", reference / "params.npz")


def test_resume_of_a_finished_run_restores_its_params(digits, tmp_path):
    prog, data = digits
    _train(prog, data, tmp_path / "reference")
    shutil.copytree(tmp_path / "reference", tmp_path / "run")
    (tmp_path / "run" / "params.npz").unlink()
    _train(prog, data, tmp_path / "run", resume=tmp_path / "run")
    assert _same_arrays(tmp_path / "run" / "params.npz", tmp_path / "reference" / "params.npz")


_HOLD = ("import sys; from pathlib import Path; from graphc.runtime.train.checkpoint import lock_run\n"
         "with lock_run(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()")


def test_a_run_directory_in_use_is_refused_naming_the_process(digits, tmp_path):
    prog, data = digits
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], cwd=tmp_path, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(DataError) as info:
            _train(prog, data, tmp_path)
    finally:
        holder.communicate("")
    assert str(info.value).count("\n") == 0 and f"pid {holder.pid}" in str(info.value)
    assert not (tmp_path / "params.npz").exists()
    _train(prog, data, tmp_path)  # free again once the holder has gone


def test_a_finished_run_is_kept_unless_forced(tmp_path, capsys):
    run = ["train", "models/digits.net", "--epochs", "1", "--no-progress", "--out", str(tmp_path)]
    assert cli.main(run) == 0
    first = (tmp_path / "params.npz").read_bytes()
    capsys.readouterr()
    assert cli.main([*run, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and f"--resume {tmp_path}" in err
    assert (tmp_path / "params.npz").read_bytes() == first
    assert cli.main([*run, "--seed", "5", "--force"]) == 0
    assert (tmp_path / "params.npz").read_bytes() != first


@pytest.fixture(scope="module")
def mid_epoch(digits, tmp_path_factory) -> Path:
    """A run directory whose checkpoint stands at epoch 1, step 40 of 44 (order and losses in it)."""
    prog, data = digits
    out = tmp_path_factory.mktemp("mid_epoch")
    with pytest.MonkeyPatch.context() as mp:
        _watch_writes(mp, 4)  # checkpoints at steps 10, 20, 30, 40; then the epoch's end
        with pytest.raises(_Killed):
            _train(prog, data, out, checkpoint_every=10)
    assert checkpoint.load_arrays(out / CHECKPOINT)[1]["step"] == 40
    return out


def _set(*keys, value):
    """A tamper that sets meta[keys[0]][keys[1]]... to value (deletes it when value is _DEL)."""
    def tamper(arrays, meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        if value is _DEL:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return tamper


def _array(name, change):
    """A tamper that replaces (or with change None, drops) the array `name`."""
    def tamper(arrays, meta):
        if change is None:
            del arrays[name]
        else:
            arrays[name] = change(arrays[name])
    return tamper


def _poke(index, value):
    def change(a):
        a = a.copy()
        a[index] = value
        return a
    return change


_DEL = object()
_TAMPERS = {
    "format missing": _set("format", value=_DEL), "format other": _set("format", value="zip"),
    "version missing": _set("version", value=_DEL), "version old": _set("version", value=1),
    "version future": _set("version", value=99), "version text": _set("version", value="2"),
    "version float": _set("version", value=2.0),
    "epoch missing": _set("epoch", value=_DEL), "epoch 0": _set("epoch", value=0),
    "epoch negative": _set("epoch", value=-3), "epoch text": _set("epoch", value="1"),
    "epoch float": _set("epoch", value=1.5), "epoch bool": _set("epoch", value=True),
    "epoch null": _set("epoch", value=None), "epoch list": _set("epoch", value=[1]),
    "step missing": _set("step", value=_DEL), "step negative": _set("step", value=-1),
    "step past the epoch": _set("step", value=45), "step text": _set("step", value="40"),
    "step float": _set("step", value=40.0), "step null": _set("step", value=None),
    "step 0 with an order": _set("step", value=0),
    "rng missing": _set("rng", value=_DEL), "rng null": _set("rng", value=None),
    "rng list": _set("rng", value=[1, 2]),
    "rng other generator": _set("rng", "bit_generator", value="MT19937"),
    "rng state negative": _set("rng", "state", "state", value=-5),
    "rng state huge": _set("rng", "state", "state", value=2 ** 200),
    "rng inc float": _set("rng", "state", "inc", value=2.0),
    "rng inc missing": _set("rng", "state", "inc", value=_DEL),
    "rng has_uint32 7": _set("rng", "has_uint32", value=7),
    "rng uinteger negative": _set("rng", "uinteger", value=-1),
    "rng extra key": _set("rng", "extra", value=0),
    "config missing": _set("config", value=_DEL), "config list": _set("config", value=[]),
    "config batch": _set("config", "batch", value=16),
    "config batch float": _set("config", "batch", value=32.0),
    "config extra key": _set("config", "epochs", value=5),
    "config seed missing": _set("config", "seed", value=_DEL),
    "config samples": _set("config", "samples", value=1436),
    "config graph": _set("config", "graph_sha256", value="0" * 16),
    "config data": _set("config", "data_sha256", value="0" * 16),
    "order missing": _array("order", None),
    "order short": _array("order", lambda a: a[:-1]),
    "order duplicate": _array("order", _poke(0, 1)),
    "order out of range": _array("order", _poke(0, 10 ** 6)),
    "order negative": _array("order", _poke(0, -1)),
    "order float": _array("order", lambda a: a.astype(np.float64)),
    "order 2-D": _array("order", lambda a: a.reshape(1, -1)),
    "losses missing": _array("losses", None),
    "losses long": _array("losses", lambda a: np.append(a, np.nan)),
    "losses int": _array("losses", lambda a: np.zeros(a.shape, np.int64)),
    "losses inf": _array("losses", _poke(0, np.inf)),
    "losses after the step": _array("losses", _poke(-1, 0.5)),
    "param missing": _array("params/fc1.W", None),
    "param shape": _array("params/fc1.W", lambda a: a.T.copy()),
    "param dtype": _array("params/fc1.W", lambda a: a.astype(np.float64)),
    "param nan": _array("params/fc2.b", _poke(0, np.nan)),
    "param 0-D": _array("params/fc2.b", lambda a: np.float32(0)),
    "state missing": _array("state/fc1.W.velocity", None),
    "state inf": _array("state/fc1.W.velocity", _poke((0, 0), np.inf)),
    "array extra": lambda arrays, meta: arrays.update({"params/fc3.W": np.zeros(3, np.float32)}),
    "best missing": _set("best", value=_DEL),
    "best without a validation split": _set("best", value=[1, 0.5]),
}


@pytest.mark.parametrize("tamper", _TAMPERS.values(), ids=_TAMPERS.keys())
def test_tampered_checkpoint_is_refused_in_one_line(digits, mid_epoch, tmp_path, tamper):
    prog, data = digits
    arrays, meta = checkpoint.load_arrays(mid_epoch / CHECKPOINT)
    tamper(arrays, meta)
    checkpoint.save_arrays(tmp_path / CHECKPOINT, arrays, meta)
    with pytest.raises(GraphcError) as info:
        _train(prog, data, tmp_path, resume=tmp_path)
    assert str(info.value).startswith(f"error: {tmp_path / CHECKPOINT}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really", b"\x93NUMPY garbage"])
def test_unreadable_checkpoint_is_refused_in_one_line(digits, tmp_path, content):
    prog, data = digits
    (tmp_path / CHECKPOINT).write_bytes(content)
    with pytest.raises(DataError) as info:
        _train(prog, data, tmp_path, resume=tmp_path)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def validated(digits, tmp_path_factory) -> tuple:
    """Digits with a validation split, and a run directory whose checkpoint stands after epoch 2
    of it (its best epoch so far recorded, with that epoch's params)."""
    prog, data = digits
    data = data_module.load_dataset("digits", 0.1)
    out = tmp_path_factory.mktemp("validated")
    _train(prog, data, out, epochs=2)
    return prog, data, out


@pytest.mark.parametrize("tamper", [
    _set("best", value=[3, 0.5]), _set("best", value=[0, 0.5]), _set("best", value=[1, "0.5"]),
    _set("best", value=[1, float("nan")]), _set("best", value=[1]), _set("best", value={"epoch": 1}),
    _array("best/fc1.W", None), _array("best/fc1.W", _poke((0, 0), np.nan)),
    _set("config", "validation", value=_DEL),
], ids=["future", "epoch 0", "loss text", "loss nan", "short", "object", "array missing", "array nan",
        "no validation"])
def test_a_tampered_best_record_is_refused_in_one_line(validated, tmp_path, tamper):
    prog, data, out = validated
    arrays, meta = checkpoint.load_arrays(out / CHECKPOINT)
    assert meta["best"][0] in (1, 2) and "best/fc1.W" in arrays  # what the tampers spoil
    tamper(arrays, meta)
    checkpoint.save_arrays(tmp_path / CHECKPOINT, arrays, meta)
    with pytest.raises(DataError) as info:
        _train(prog, data, tmp_path, resume=tmp_path, epochs=3)
    assert str(info.value).startswith(f"error: {tmp_path / CHECKPOINT}: ") and "\n" not in str(info.value)


def test_a_finished_validated_run_rewrites_its_best_params_on_resume(validated, tmp_path):
    prog, data, out = validated
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / "params.best.npz").unlink()
    _train(prog, data, tmp_path / "run", resume=tmp_path / "run", epochs=2)
    assert _same_arrays(tmp_path / "run" / "params.best.npz", out / "params.best.npz")


def test_resume_with_a_changed_activation_is_refused(digits, mid_epoch, tmp_path):
    _, data = digits
    model = tmp_path / "digits.net"
    model.write_text((ROOT / "models" / "digits.net").read_text().replace("sigmoid(", "tanh("))
    shutil.copytree(mid_epoch, tmp_path / "run")
    with pytest.raises(DataError, match="training graph"):
        _train(driver.load(model), data, tmp_path / "run", resume=tmp_path / "run")


def test_resume_on_other_data_of_the_same_name_and_size_is_refused(digits, mid_epoch, tmp_path):
    prog, data = digits
    mirrored = replace(data, train={**data.train, "x": np.ascontiguousarray(data.train["x"][:, ::-1])})
    shutil.copytree(mid_epoch, tmp_path / "run")
    with pytest.raises(DataError, match="training data"):
        _train(prog, mirrored, tmp_path / "run", resume=tmp_path / "run")


def test_the_untampered_checkpoint_resumes(digits, mid_epoch, tmp_path):
    prog, data = digits
    shutil.copytree(mid_epoch, tmp_path / "run")
    assert len(_train(prog, data, tmp_path / "run", resume=tmp_path / "run")) == 1


def test_leftover_temporary_files_are_removed_by_the_next_run(digits, tmp_path):
    prog, data = digits
    _train(prog, data, tmp_path)
    ours = [tmp_path / ".checkpoint.npz.0123456789ab.tmp", tmp_path / ".params.npz.ba9876543210.tmp"]
    theirs = tmp_path / ".notes.tmp"
    for path in [*ours, theirs]:
        path.write_bytes(b"half a file")  # as a SIGKILL mid-write leaves them
    _train(prog, data, tmp_path, resume=tmp_path)
    assert [p.exists() for p in ours] == [False, False] and theirs.exists()


def test_a_finished_scheduled_run_does_not_suggest_more_epochs(digits, tmp_path):
    """A cosine schedule spans the run's epochs, so `--epochs N` is refused for it: the hint that
    it trains on would send the user into that error."""
    prog = driver.load(ROOT / "models" / "digits.net")
    prog.train.schedule, prog.train.schedule_args = "cosine", {}
    data = digits[1]
    _train(prog, data, tmp_path)
    lines = []
    train(prog, data, options(tmp_path, resume=tmp_path), report=lines.append)
    done = next(line for line in lines if line.startswith("resumed"))
    assert "--epochs N" not in done and "schedule" in done
    with pytest.raises(DataError, match="epochs"):
        _train(prog, data, tmp_path, resume=tmp_path, epochs=2)


def test_eval_reads_params_from_a_checkpoint(tmp_path, capsys):
    assert cli.main(["train", "models/digits.net", "--epochs", "1", "--no-progress",
                     "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    results = []
    for name in ("params.npz", CHECKPOINT):
        assert cli.main(["eval", "models/digits.net", "--params", str(tmp_path / name)]) == 0
        results.append(capsys.readouterr().out)
    assert results[0] == results[1] and "test_accuracy" in results[0]


@pytest.mark.parametrize("split, base", [("training", "train-images-idx3-ubyte"),
                                         ("test", "t10k-labels-idx1-ubyte")])
def test_idx_errors_name_the_split(tmp_path, split, base):
    for _, (name, magic) in data_module._IDX_FILES.items():
        dims = 3 if magic & 0xFF == 3 else 1
        (tmp_path / name).write_bytes(magic.to_bytes(4, "big") + (1).to_bytes(4, "big") * dims + b"\0")
    (tmp_path / base).write_bytes(b"\0\0\0\0")
    kind = "images" if "images" in base else "labels"
    with pytest.raises(DataError, match=f"uint8 {split} {kind}"):
        data_module.load_dataset(tmp_path)


# --- data and params: float32's range, dtypes, memory (issue 17, items 3, 8 and 11) ---------------

@pytest.mark.parametrize("name, content, where", [
    ("ints.csv", "1,2,0\n1,1e39,1\n3,4,1\n", "line 2, column 2"),  # integral, beyond int32
    ("floats.csv", "0.5,2,0\n\n1,-1e39,1\n3,4,1\n", "line 3, column 2"),
    ("x.npz", {"x": np.where(np.eye(4, 3) > 0, 1e39, 0.5), "y": np.arange(4) % 2}, r"x\[0, 0\]"),
])
def test_features_beyond_float32_are_refused_naming_row_and_column(tmp_path, name, content, where):
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **content)
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=rf"{name}: {where} is -?1e\+39, beyond float32's range"):
        if name.endswith(".npz"):  # arrays keep their dtype when loaded; fed to an f32 input here
            model = tmp_path / "m.net"
            model.write_text("net m\ndim B\ninput x : f32[B, 3]\ninput y : i32[B]\n"
                             "param W : f32[3, 2] = zeros()\nloss = softmax_cross_entropy(x @ W, y)\n")
            prog = driver.load(model)
            bind(prog, driver.forward(prog, 4), content, {}, str(path), "train")
        else:
            data_module.load_dataset(path)


RELU_NET = """net relu
dim B
input x : f32[B, 4]
input y : i32[B]
param W1 : f32[4, 8] = xavier_uniform()
param W2 : f32[8, 3] = xavier_uniform()
logits = relu(x @ W1) @ W2
loss = softmax_cross_entropy(logits, y)
train { optimizer = sgd(lr=0.1)  batch = 4  epochs = 1 }
"""


def test_nan_params_behind_a_finite_loss_stop_training(tmp_path):
    """relu maps a NaN sample's activations to 0: the loss stays finite while W1's gradient, and so
    W1, turns NaN."""
    (tmp_path / "relu.net").write_text(RELU_NET)
    x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
    x[5] = np.nan  # the loaders refuse such data; built in memory
    y = (np.arange(16) % 3).astype(np.int32)
    data = data_module.Dataset("poisoned", {"x": x, "y": y}, {"x": x[:4] * 0, "y": y[:4]})
    with pytest.raises(GraphcError, match="param W1 became NaN or Inf at epoch 1, step 4"):
        train(driver.load(tmp_path / "relu.net"), data, options(None, batch=4), report=lambda s: None)


@pytest.fixture(scope="module")
def small_params(tmp_path_factory) -> list:
    """The params of a model with one f32[6, 3] param, W."""
    path = tmp_path_factory.mktemp("model") / "small.net"
    path.write_text(RELU_NET.replace("W1 : f32[4, 8]", "W : f32[4, 3]").replace(
        "relu(x @ W1) @ W2", "x @ W").replace("param W2 : f32[8, 3] = xavier_uniform()\n", ""))
    return driver.load(path).eval_graph.params


@pytest.mark.parametrize("values", [
    np.full((4, 3), "1.5"), np.full((4, 3), b"1.5"), np.ones((4, 3), bool), np.ones((4, 3), np.int64),
    np.zeros((4, 3), "datetime64[s]"), np.zeros((4, 3), "timedelta64[s]"), np.full((4, 3), 1 + 2j),
    np.zeros((4, 3), "V4"), np.zeros((4, 3), [("a", "f4")]),
], ids=lambda a: str(a.dtype))
def test_params_of_other_dtypes_are_refused(tmp_path, small_params, values):
    np.savez(tmp_path / "p.npz", W=values)
    expect = f"p.npz: param W has dtype {values.dtype} (not floats), model wants f32[4,3]"
    with pytest.raises(DataError, match=re.escape(expect)):
        checkpoint.load_params(tmp_path / "p.npz", small_params)


def test_params_are_floats_that_fit_the_params_dtype(tmp_path, small_params):
    for dtype in (np.float16, np.float32, ">f4", np.float64, np.longdouble):
        np.savez(tmp_path / "p.npz", W=np.full((4, 3), 0.5, dtype))
        assert checkpoint.load_params(tmp_path / "p.npz", small_params)["W"].dtype == np.float32
    np.savez(tmp_path / "p.npz", W=np.where(np.eye(4, 3, k=1) > 0, 1e39, 0.5))
    with pytest.raises(DataError, match=r"param W\[0, 1\] is 1e\+39, beyond float32's range"):
        checkpoint.load_params(tmp_path / "p.npz", small_params)


def test_deeply_nested_params_metadata_is_refused(tmp_path, small_params):
    deep = np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8)
    np.savez(tmp_path / "p.npz", W=np.zeros((4, 3), np.float32), __meta__=deep)
    with pytest.raises(DataError, match="p.npz: corrupt checkpoint metadata"):
        checkpoint.load_params(tmp_path / "p.npz", small_params)


@pytest.fixture
def four_mib(monkeypatch) -> None:
    """A machine with 4 MiB of memory to spare, so that small files exceed it."""
    monkeypatch.setattr(data_module, "_available_memory", lambda: 4 << 20)


def test_npz_declaring_more_than_memory_is_refused_before_reading(tmp_path, four_mib):
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:  # headers only: 8 TB declared
        for key, shape in (("x", (10**6, 10**6)), ("y", (10**6,))):
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(
                    member, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with pytest.raises(DataError, match=r"huge.npz: arrays declare 7.45e\+03 GiB of numbers; "
                                        r"loading needs about 3 times that, more than the 0.00391 GiB"):
        data_module.load_dataset(tmp_path / "huge.npz")


def test_idx_declaring_more_than_memory_is_refused_before_reading(tmp_path, four_mib):
    files = {"train-images-idx3-ubyte": (0x803, (2048, 32, 32)), "train-labels-idx1-ubyte": (0x801, (2048,)),
             "t10k-images-idx3-ubyte": (0x803, (1, 32, 32)), "t10k-labels-idx1-ubyte": (0x801, (1,))}
    for name, (magic, dims) in files.items():
        header = np.array([magic, *dims], ">u4").tobytes()
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(header + bytes(int(np.prod(dims)))))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: header declares 0.00195 GiB"):
        data_module.load_dataset(tmp_path)


@pytest.mark.parametrize("text, expect", [
    (("0," * 99 + "1\n") * 3000, r"by line 1311, holds 0.00195 GiB of numbers; loading needs about 3 times"),
    ("0," * 100_000, r"line 1 is longer than 65536 bytes"),  # one line, no newline
])
def test_csv_gzip_bomb_is_refused_as_it_grows(tmp_path, four_mib, text, expect):
    (tmp_path / "bomb.csv.gz").write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DataError, match=rf"bomb.csv.gz: {expect}"):
        data_module.load_dataset(tmp_path / "bomb.csv.gz")


def test_running_out_of_memory_names_the_data_file(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError
    (tmp_path / "d.csv").write_text("1,2,0\n3,4,1\n")
    monkeypatch.setattr(data_module, "_numbers", out_of_memory)
    with pytest.raises(DataError, match="d.csv: out of memory loading this data set"):
        data_module.load_dataset(tmp_path / "d.csv")


@pytest.mark.parametrize("member, expect", [
    ("huge", r"p.npz: arrays declare 7.45e\+03 GiB of numbers"),
    ("raw bytes", r"p.npz: cannot read checkpoint \(.*magic string"),  # np.load hands back bytes
])
def test_params_file_declaring_too_much_or_no_npy_is_refused(tmp_path, small_params, four_mib,
                                                              member, expect):
    with zipfile.ZipFile(tmp_path / "p.npz", "w") as zf:
        if member == "huge":
            with zf.open("W.npy", "w") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
        else:
            zf.writestr("W", b"0.5")
    with pytest.raises(DataError, match=expect):
        checkpoint.load_params(tmp_path / "p.npz", small_params)


# --- model files (issue 17, item 6) ---------------------------------------------------------------

lowering = importlib.import_module("graphc.frontend.lower")  # the package's `lower` is the function
_X = "dim B\ninput x : f32[B, 4]\n"


def _layers(n: int, body: str) -> str:
    """Layers c1..cn over x, each returning `body` with {p} its predecessor (c0 doubles h)."""
    return _X + "layer c0(h: f32[B, 4]) -> f32[B, 4] {\n  return h * 2\n}\n" + "".join(
        f"layer c{i}(h: f32[B, 4]) -> f32[B, 4] {{\n  return {body.format(p=f'c{i - 1}')}\n}}\n"
        for i in range(1, n + 1)) + f"loss = mean(c{n}(x))\n"


def test_exponential_inlining_is_refused_with_a_position(monkeypatch):
    monkeypatch.setattr(lowering, "MAX_NODES", 5000)  # the real limit takes seconds to reach
    with pytest.raises(GraphcError, match="more than 5,000 nodes") as e:
        load_source(_layers(30, "{p}(h) + {p}(h)"), "exp.net")  # 2**30 nodes from 3 KB
    assert re.match(r"exp\.net:\d+:\d+: error: ", str(e.value))
    assert "c30 -> ... -> c" in e.value.hint and "doubles" in e.value.hint


@pytest.mark.parametrize("source", [
    _layers(2000, "{p}(h)"),
    _X + "loss = mean(" + "relu(" * 3000 + "x" + ")" * 3000 + ")\n",
    _X + "loss = mean(reshape(x, shape=" + "[" * 3000 + "]" * 3000 + "))\n",
], ids=["layer chain", "calls", "lists"])
def test_deep_nesting_is_a_positioned_error(source):
    with pytest.raises(GraphcError, match="nested too deeply") as e:
        load_source(source, "deep.net")
    assert re.match(r"deep\.net:\d+:\d+: error: ", str(e.value))
    assert max(map(len, str(e.value).splitlines())) < 200  # the 18 KB line is shown around the caret


def test_long_operator_chains_are_walked_without_recursion(monkeypatch):
    alpha = " + ".join(["0.0001"] * 5000)
    source = _X + f"h = leaky_relu(x, alpha={alpha})\nloss = mean({'-' * 5000}h{' + h' * 4999})\n"
    g = load_source(source, "long.net").graph
    assert [n.op for n in g.nodes].count("add") == 4999 and [n.op for n in g.nodes].count("neg") == 5000
    assert g.nodes[0].attrs["alpha"] == pytest.approx(0.5)
    monkeypatch.setattr(lowering, "MAX_NODES", 1000)
    with pytest.raises(GraphcError, match="more than 1,000 nodes") as e:
        load_source(source, "long.net")
    assert str(e.value).startswith("long.net:4:")


def test_model_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "apples.net"
    path.write_bytes(b"\xef\xbb\xbf" + (ROOT / "models/apples.net").read_bytes())
    assert driver.load(path).graph.name == "apples"


@pytest.mark.parametrize("args", [["ir", "{}"], ["eval", "models/twolayer.net", "--params", "{}"]])
def test_a_fifo_as_model_or_params_is_refused(tmp_path, args):
    os.mkfifo(tmp_path / "fifo")
    done = subprocess.run([*GRAPHC, *(a.format(tmp_path / "fifo") for a in args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, f"error: {tmp_path / 'fifo'} is a FIFO, not a regular file\n")


def test_devices_and_directories_are_not_read(tmp_path):
    for path, kind in (("/dev/zero", "a device"), (tmp_path, "a directory")):
        with pytest.raises(GraphcError, match=f"is {kind}, not a regular file"):
            driver.load(path)


# --- the C library (issue 17, item 9) --------------------------------------------------------------

@needs_cc
def test_c_library_refuses_labels_out_of_range_and_null_contexts(tmp_path):
    (tmp_path / "m.net").write_text("net m\ndim B\ninput x : f32[B, 3]\ninput y : i32[B]\n"
                                    "param W : f32[3, 4] = normal(std=1)\n"
                                    "loss = softmax_cross_entropy(x @ W, y)\noutput p = x @ W\n")
    write_artifacts(driver.load(tmp_path / "m.net"), tmp_path, batch=2, threads=1)
    lib = CLibrary(tmp_path / f"libm{SHARED_SUFFIX}", "m")
    header = (tmp_path / "m.h").read_text()
    assert "GRAPHC_ERANGE = -2" in header and "values 0..3, checked by each step" in header
    assert "destroyed twice" in header
    ctx, loss = lib.create(0), ctypes.c_double(7.0)
    try:
        x, w = np.ones((2, 3), np.float32), np.empty((3, 4), np.float32)
        assert lib.set_input(ctx, b"x", x.ctypes.data) == 0 and lib.get_param(ctx, b"W", w.ctypes.data) == 0
        for labels in ([0, 4], [-1, 0]):
            y = np.array(labels, np.int32)
            assert lib.set_input(ctx, b"y", y.ctypes.data) == 0
            assert lib.train_step(ctx, ctypes.byref(loss)) == -2 and loss.value == 7.0  # GRAPHC_ERANGE
        assert np.array_equal(lib.get(ctx, "W", w), w)  # nothing ran
        assert lib.set_input(ctx, b"y", np.array([0, 3], np.int32).ctypes.data) == 0
        assert lib.train_step(ctx, ctypes.byref(loss)) == 0 and loss.value > 0
        assert lib.infer(ctx) == 0 and lib.set_lr(ctx, float("nan")) == -1
    finally:
        lib.destroy(ctx)
    assert (lib.train_step(None, None), lib.infer(None), lib.set_lr(None, 0.1)) == (-1, -1, -1)
    assert (lib.set_input(None, b"x", x.ctypes.data), lib.get_param(None, b"W", w.ctypes.data)) == (-1, -1)
    assert lib.input(None, b"x") is None and lib.output(None, b"p") is None
    lib.destroy(None)


# --- output paths and settings (issue 17, item 10) ------------------------------------------------

def _fails(capsys, argv: list[str], message: str) -> None:
    """`graphc argv` ends with exit 2 and one line: `error: message`."""
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def _train_digits(*args: str) -> list[str]:
    return ["train", str(ROOT / "models/digits.net"), "--epochs", "1", "--no-progress", *args]


def test_log_and_plot_outside_existing_directories_are_refused_before_training(tmp_path, capsys):
    missing = tmp_path / "no" / "dir"
    _fails(capsys, _train_digits("--log", str(missing / "log.jsonl")),
           f"--log {missing / 'log.jsonl'}: {missing} does not exist")
    _fails(capsys, _train_digits("--log", str(tmp_path)), f"--log {tmp_path}: is a directory; name a file")
    _fails(capsys, _train_digits("--plot", str(missing / "p.png")),
           f"--plot {missing / 'p.png'}: {missing} does not exist")  # root once made /nonexistent
    assert not (tmp_path / "no").exists()


def test_log_into_a_fresh_out_directory_and_on_a_full_disk(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(_train_digits("--out", str(out), "--log", str(out / "log.jsonl"))) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to fill")
    assert cli.main(_train_digits("--log", "/dev/full")) == 2
    assert capsys.readouterr().err == "error: cannot write the log /dev/full: No space left on device\n"


def test_compile_into_an_unusable_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out in ("/dev/null", str(tmp_path / "file" / "sub")):
        assert cli.main(["compile", str(ROOT / "models/apples.net"), "-o", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: -o {out}: cannot make a directory there (") and err.count("\n") == 1


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_graphc_threads_is_one_line(monkeypatch, capsys, value):
    monkeypatch.setenv("GRAPHC_THREADS", value)
    _fails(capsys, ["grad", str(ROOT / "models/apples.net")],
           f"GRAPHC_THREADS={value!r}: expected a whole number of threads, at least 1")


def test_check_batch_larger_than_the_data_is_one_line(capsys):
    _fails(capsys, ["check", str(ROOT / "models/digits.net"), "--batch", "5000"],
           "digits: 1438 training samples, fewer than the batch of 5000 to check")
