"""Tests for graphc.runtime.train.data (data set loading) and graphc.runtime.train.checkpoint."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from graphc.errors import DataError
from graphc.runtime.train import checkpoint
from graphc.runtime.train.checkpoint import load_arrays, save_arrays
from graphc.runtime.train import data as data_module
from graphc.runtime.train.data import Dataset, load_dataset
from graphc.runtime.train.predict import write_predictions


def _check_types(ds: Dataset) -> None:
    """Images as bytes or float32, labels as whole numbers; every array C-contiguous."""
    for split in (ds.train, ds.test):
        assert split["x"].dtype in (np.uint8, np.float32) and split["x"].flags.c_contiguous
        assert split["y"].dtype.kind in "iu" and split["y"].ndim == 1


# ---- bundled data ----

@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


def test_mnist_shapes_and_ranges(mnist: Dataset) -> None:
    _check_types(mnist)
    assert mnist.name == "mnist"
    assert mnist.train["x"].shape == (60000, 28, 28) and mnist.test["x"].shape == (10000, 28, 28)
    assert mnist.train["y"].shape == (60000,) and mnist.test["y"].shape == (10000,)
    # kept as the files' bytes: the models declare pixels(255), nothing is scaled here
    assert mnist.train["x"].dtype == np.uint8 and mnist.train["x"].max() == 255
    assert set(np.unique(mnist.train["y"])) == set(range(10)) == set(np.unique(mnist.test["y"]))
    # The canonical first test labels: reading must not shuffle or shift the data.
    assert mnist.test["y"][:5].tolist() == [7, 2, 1, 0, 4]


def test_digits_fixed_split() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    _check_types(a)
    assert a.train["x"].shape[1:] == (64,)
    assert len(a.train["x"]) + len(a.test["x"]) == 1797 and len(a.test["x"]) == 359
    assert a.train["x"].max() == 16  # the file's intensities; digits.net declares pixels(16)
    for split in ("train", "test"):
        for k in ("x", "y"):
            assert np.array_equal(getattr(a, split)[k], getattr(b, split)[k])


def test_unknown_bundled_name() -> None:
    with pytest.raises(DataError, match="no-such-set") as exc:
        load_dataset("no-such-set")
    assert "digits" in exc.value.message and "mnist" in exc.value.message


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.csv"
    with pytest.raises(DataError, match="absent.csv"):
        load_dataset(missing)


# ---- CSV ----

def _write_csv(path: Path, x: np.ndarray, y: np.ndarray, fmt: str = "%d") -> None:
    table = np.column_stack([x, y])
    text = "\n".join(",".join(fmt % v for v in row) for row in table) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


@pytest.mark.parametrize("filename", ["ints.csv", "ints.csv.gz"])
def test_csv_round_trip_integer_features(tmp_path: Path, filename: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 8, size=(50, 7))
    y = rng.integers(0, 3, size=50)
    _write_csv(tmp_path / filename, x, y)
    ds = load_dataset(tmp_path / filename)
    _check_types(ds)
    assert ds.name == "ints"
    assert ds.train["x"].shape == (40, 7) and ds.test["x"].shape == (10, 7)
    # The split is a permutation of the rows: every (sample, label) pair survives, unscaled.
    got = np.column_stack([np.concatenate([ds.train["x"], ds.test["x"]]),
                           np.concatenate([ds.train["y"], ds.test["y"]])])
    assert np.array_equal(np.unique(got, axis=0), np.unique(np.column_stack([x, y]), axis=0))


def test_csv_float_features_unscaled(tmp_path: Path) -> None:
    x = np.linspace(-3.5, 9.25, 30).reshape(10, 3)
    y = np.arange(10) % 2
    path = tmp_path / "floats.csv"
    _write_csv(path, x, y, fmt="%.17g")
    ds = load_dataset(path)
    assert sorted(np.concatenate([ds.train["x"], ds.test["x"]]).ravel().tolist()) == \
        pytest.approx(sorted(x.ravel().tolist()))


@pytest.mark.parametrize(("text", "expect"), [
    ("1,2,0\n3,4\n", r"line 2: expected 3"),
    ("1,2,0\n3,x,1\n", r"line 2: non-numeric"),
    ("a,b,label\n1,2,0\n1,x,1\n", r"line 3: non-numeric"),
    ("a,b\n1,2\n1,nan\n", r"line 3, column 2 \(b\) is nan, not a finite number"),
    ("1,2,0\n\n1,nan,1\n", r"line 3, column 2 is nan, not a finite number"),
    ("1,2,0\n1,inf,1\n", r"line 2, column 2 is inf, not a finite number"),
    ("", r"no data rows"),
    ("a,b,a\n1,2,3\n", r"the header names column a twice \(columns 1 and 3\)"),
    ("x0,x2,y\n1,2,3\n", r"columns for array x \(x0, x2\) lack element \[1\]: number them from 0 \(or 1\)"),
    ("x2,x3,y\n1,2,3\n", r"columns for array x \(x2, x3\) start at 2"),
    ("x,x_0,x_1\n1,2,3\n", r"column x and its column x_0 both name array x"),
    ('"m[0, 0]",m[1],y\n1,2,3\n', r"columns for array m \(m\[0, 0\], m\[1\]\) mix 1 and 2 indices"),
    ("a,,b\n1,2,3\n", r"line 1 \(the header\): column 2 has no name"),
    ("1\n2\n", r"line 1: need at least one feature"),
])
def test_csv_errors(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=expect) as exc:
        load_dataset(path)
    assert "bad.csv" in exc.value.message


def test_csv_header_names_arrays_and_groups_numbered_columns(tmp_path: Path) -> None:
    """A first line that is not all numbers names the columns: NAMEi / NAME_i columns (two or more,
    numbered from 0 or 1, in any order) form array NAME, other columns an array each."""
    path = tmp_path / "named.csv"
    path.write_text("id,x1,x0,x2,label,w_1,w_2\n" + "".join(
        f"{i},{i + 0.5},{i + 0.25},{i + 0.75},{i % 3},{2 * i},{-i}\n" for i in range(10)))
    origin, arrays = data_module.load_arrays(path)
    assert list(arrays) == ["id", "x", "label", "w"]  # in the file's order
    assert arrays["x"].shape == (10, 3) and arrays["x"][4].tolist() == [4.25, 4.5, 4.75]  # by index
    assert arrays["w"][3].tolist() == [6, -3] and arrays["label"].dtype == np.uint8
    assert origin.columns == {"id": "column 1", "x": "columns x0..x2", "label": "column 5",
                              "w": "columns w_1..w_2"}
    ds = load_dataset(path)  # split as any other source: a fixed 20% tests
    assert ds.train["x"].shape == (8, 3) and ds.test["label"].shape == (2,)


def test_csv_header_reads_what_predict_writes(tmp_path: Path) -> None:
    outputs = {"pred": np.arange(24, dtype=np.float32).reshape(4, 2, 3) / 8,
               "score": np.array([1.5, -2, 0, 3], np.float32)}
    write_predictions(tmp_path / "p.csv", outputs)  # columns "pred[0, 0]", ..., score
    origin, arrays = data_module.load_arrays(tmp_path / "p.csv")
    assert arrays.keys() == outputs.keys() and origin.columns["pred"] == "columns pred[0, 0]..pred[1, 2]"
    for k, v in outputs.items():
        np.testing.assert_array_equal(arrays[k], v)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(("1,2,0\n" * 1000).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.csv.gz.*gzip"):
        load_dataset(path)


def test_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="garbage.csv.gz.*gzip"):
        load_dataset(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.dat"  # .txt is text, for a language model (tests/test_text.py)
    path.write_text("1,2,0\n")
    with pytest.raises(DataError, match="data.dat: unsupported"):
        load_dataset(path)


# ---- NPZ ----

def test_npz_with_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x_train = rng.integers(0, 256, size=(20, 3, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(6, 3, 5), dtype=np.uint8)
    y_train, y_test = np.arange(20) % 4, np.arange(6) % 5
    path = tmp_path / "split.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, w_val=np.ones((3, 2)))
    ds = load_dataset(path)
    assert ds.name == "split"
    assert np.array_equal(ds.train["x"], x_train) and np.array_equal(ds.test["x"], x_test)
    assert ds.train["y"].tolist() == y_train.tolist() and ds.test["y"].tolist() == y_test.tolist()
    assert ds.validation is not None and ds.validation["w"].shape == (3, 2)


def test_npz_single_split_and_a_validation_fraction(tmp_path: Path) -> None:
    x = np.random.default_rng(3).normal(size=(25, 11)) * 10
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=(np.arange(25) % 3).astype(np.float32))
    ds = load_dataset(path)
    assert ds.train["x"].shape == (20, 11) and ds.test["x"].shape == (5, 11)
    assert np.array_equal(np.sort(np.concatenate([ds.train["x"], ds.test["x"]]), axis=None), np.sort(x, axis=None))
    assert np.array_equal(ds.test["x"], load_dataset(path).test["x"])  # identical across loads
    held = load_dataset(path, 0.25)
    assert held.validation is not None and len(held.validation["x"]) == 5 and len(held.train["x"]) == 15


def test_test_and_validation_splits_from_files_or_fractions(tmp_path: Path) -> None:
    """`test` works as `validation` does: a file of that split's samples, or a fraction held out."""
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "all.npz", x=rng.normal(size=(20, 3)), y=np.arange(20) % 2)
    np.savez(tmp_path / "t.npz", x=rng.normal(size=(7, 3)), y=np.arange(7) % 2)
    np.savez(tmp_path / "v.npz", x=rng.normal(size=(5, 3)), y=np.arange(5) % 2)
    ds = load_dataset(tmp_path / "all.npz", test=str(tmp_path / "t.npz"))
    assert len(ds.train["x"]) == 20 and len(ds.test["x"]) == 7  # nothing held out: the file tests
    assert (ds.origin("train").name, ds.origin("test").name) == ("all", "t")
    ds = load_dataset(tmp_path / "all.npz", tmp_path / "v.npz", tmp_path / "t.npz")
    assert ds.validation is not None and len(ds.validation["x"]) == 5 and ds.origin("validation").name == "v"
    ds = load_dataset(tmp_path / "all.npz", 0.25, 0.5)  # the test half first, then a quarter of the rest
    assert ds.validation is not None and [len(s["x"]) for s in ds.splits().values()] == [8, 2, 10]
    np.savez(tmp_path / "train_only.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4))
    assert len(load_dataset(tmp_path / "train_only.npz", test=tmp_path / "t.npz").test["y"]) == 7
    (tmp_path / "book.txt").write_text("text validates on its last tenth " * 10)
    with pytest.raises(DataError, match=r"drop test \(text has no test split\)"):
        load_dataset(tmp_path / "book.txt", test=0.1)


@pytest.mark.parametrize(("arrays", "kw", "expect"), [
    ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 2))}, {"test": "t.npz"},
     r"holds a test split \(arrays ending in _test\) already; drop test = \.\.\. or those arrays"),
    ({"x_train": np.zeros((4, 2)), "x_test": np.zeros((2, 2)), "x_val": np.zeros((2, 2))},
     {"validation": "t.npz"}, r"holds a validation split \(arrays ending in _val\) already"),
    ({"x_train": np.zeros((4, 2))}, {}, r"no test split: .* or a file of test samples \(test = \"FILE\", --test FILE\)"),
])
def test_a_split_given_twice_or_missing_is_refused(tmp_path: Path, arrays: dict, kw: dict, expect: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    np.savez(tmp_path / "t.npz", x=np.zeros((3, 2)))
    with pytest.raises(DataError, match=expect):
        load_dataset(tmp_path / "d.npz", **{k: str(tmp_path / v) for k, v in kw.items()})


@pytest.mark.parametrize(("arrays", "expect"), [
    ({"a_train": np.zeros((2, 2))}, r"no test split"),
    ({"x_train": np.zeros((2, 2)), "x_test": np.zeros((2, 2)), "y": np.zeros(2)}, r"y have no split suffix"),
    ({"x": np.array([[0.0, 1], [np.nan, 2]]), "y": np.array([0, 1])}, r"x\[1, 0\] is nan"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, r"x has 3, y has 2"),
    ({"x": np.zeros((0, 2)), "y": np.zeros(0, int)}, r"x has 0, y has 0"),
    ({"x": np.zeros((4, 2)), "y": np.array(["a", "b", "c", "d"])}, r"'y' has dtype"),
])
def test_npz_errors(tmp_path: Path, arrays: dict, expect: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=expect) as exc:
        load_dataset(path)
    assert "bad.npz" in exc.value.message


def test_npz_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.array([[1], [2]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="pickled.npz"):
        load_dataset(path)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"\x00\x01junk")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(path)


# ---- MNIST IDX directories ----

def _idx(magic: int, dims: tuple[int, ...], data: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + data


def _write_mnist(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = True,
                 **overrides: bytes) -> None:
    rng = np.random.default_rng(4)
    files = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = rng.integers(0, 256, size=(n, 5, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        files[f"{split}-images-idx3-ubyte"] = _idx(0x803, (n, 5, 3), pixels.tobytes())
        files[f"{split}-labels-idx1-ubyte"] = _idx(0x801, (n,), labels.tobytes())
    files.update({k.replace("_", "-"): v for k, v in overrides.items()})
    root.mkdir(exist_ok=True)
    for name, data in files.items():
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path / "tiny", gz=gz)
    ds = load_dataset(tmp_path / "tiny")
    _check_types(ds)
    assert ds.name == "tiny"
    assert ds.train["x"].shape == (6, 5, 3) and ds.test["x"].shape == (4, 5, 3)
    assert ds.train["x"].dtype == np.uint8 and ds.train["y"].dtype == np.int32


def test_idx_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not an MNIST.*train-images-idx3-ubyte\[.gz\]"):
        load_dataset(tmp_path / "empty")


def test_idx_wrong_magic(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m", train_labels_idx1_ubyte=_idx(0x803, (6,), bytes(6)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: wrong IDX magic.*0x00000801"):
        load_dataset(tmp_path / "m")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m", t10k_labels_idx1_ubyte=_idx(0x801, (3,), bytes(3)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: header says 4 images.*3 lab"):
        load_dataset(tmp_path / "m")


def test_idx_data_shorter_than_header(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m", gz=False,
                 train_images_idx3_ubyte=_idx(0x803, (6, 5, 3), bytes(6 * 15 - 1)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: data is shorter"):
        load_dataset(tmp_path / "m")


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "m")
    target = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        load_dataset(tmp_path / "m")


# ---- checkpoints ----

def test_checkpoint_round_trip(tmp_path: Path) -> None:
    arrays = {
        "fc1.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fc1.bias": np.zeros(4, np.float32),
        "opt.step": np.array(7, np.int64),
        "file": np.ones(2),  # collides with np.savez's own parameter name
    }
    meta = {"epoch": 3, "model": "mlp.net", "lr": 0.01}
    path = tmp_path / "ckpt.npz"
    save_arrays(path, arrays, meta)
    loaded, loaded_meta = load_arrays(path)
    assert loaded_meta == meta
    assert set(loaded) == set(arrays)
    for name, a in arrays.items():
        assert loaded[name].dtype == a.dtype and np.array_equal(loaded[name], a)
    # Plain numpy reads it without pickle.
    with np.load(path, allow_pickle=False) as npz:
        assert "fc1.weight" in npz.files


def test_checkpoint_without_meta(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    save_arrays(path, {"w": np.ones(3)})
    arrays, meta = load_arrays(path)
    assert meta == {} and np.array_equal(arrays["w"], np.ones(3))


def test_checkpoint_overwrite_failure_is_atomic(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.npz"
    save_arrays(path, {"w": np.ones(3)}, {"epoch": 1})
    before = path.read_bytes()

    def failing_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(DataError, match="ckpt.npz"):
        save_arrays(path, {"w": np.zeros(3)}, {"epoch": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_checkpoint_unserializable_array_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError):
        save_arrays(path, {"o": np.array([object()])})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 broken zip", b"not numpy"])
def test_checkpoint_load_errors(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "broken.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match="broken.npz"):
        load_arrays(path)


def test_checkpoint_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    save_arrays(path, {"w": np.arange(1000.0)}, {"k": 1})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="cut.npz"):
        load_arrays(path)
