"""Hostile and unlucky inputs (issue 17): each test is a case that once crashed, hung, ran foreign
code or gave a silently wrong result, and must now end cleanly."""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from llvmlite import ir

from graphc import cli, driver
from graphc.codegen.jit import compile_cached
from graphc.codegen.target import host_target
from graphc.errors import DataError, GraphcError
from graphc.runtime import checkpoint
from graphc.runtime import data as data_module
from graphc.runtime.trainer import train
from test_faults import options

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
    script = ("import ctypes, sys; sys.path.insert(0, 'tests'); from test_hostile import _run_tiny; "
              f"print(_run_tiny('{key}', 7))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
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
def test_unusable_cache_does_not_stop_a_compile(env):
    done = subprocess.run([sys.executable, "-m", "graphc.cli", "grad", "models/apples.net"], cwd=ROOT,
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


# --- data and params: float32's range, dtypes, memory (issue 17, items 3, 8 and 11) ---------------

@pytest.mark.parametrize("name, content, where", [
    ("ints.csv", "1,2,0\n1,1e39,1\n3,4,1\n", "line 2, column 2"),  # integral: divided by the maximum
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
    data = data_module.Dataset("poisoned", x, y, x[:4] * 0, y[:4], 3)
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
    monkeypatch.setattr(data_module, "_stored", out_of_memory)
    with pytest.raises(DataError, match="d.csv: out of memory loading this data set"):
        data_module.load_dataset(tmp_path / "d.csv")
