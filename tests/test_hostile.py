"""Hostile and unlucky inputs (issue 17): each test is a case that once crashed, hung, ran foreign
code or gave a silently wrong result, and must now end cleanly."""

from __future__ import annotations

import gzip
import re
import zipfile

import numpy as np
import pytest

from graphc import driver
from graphc.errors import DataError, GraphcError
from graphc.runtime import checkpoint
from graphc.runtime import data as data_module
from graphc.runtime.trainer import train
from test_faults import options


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
