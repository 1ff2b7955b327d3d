"""Bad data where it meets a model: samples of the wrong shape, labels outside the model's classes,
NaN/Inf features and empty files, each a DataError naming the file (and, where the model is at
fault, positioned at the model's line). The loaders' own checks are in test_data.py."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from graphc.cli import main
from graphc.errors import DataError
from graphc.runtime.train.data import load_dataset

ROOT = Path(__file__).resolve().parent.parent
MODEL = """net small
dim B
input x : f32[B, 6]
input y : i32[B]
param W : f32[6, 3] = zeros()
loss = softmax_cross_entropy(x @ W, y)
metric accuracy = accuracy(x @ W, y)
train {{ optimizer = sgd(lr=0.1)  batch = 4  epochs = 1  data = "{data}" }}
"""


def run(tmp_path: Path, command: str, capsys, **arrays: np.ndarray) -> str:
    """`graphc COMMAND small.net` on an .npz of `arrays`; its stderr, after checking exit status 2."""
    np.savez(tmp_path / "d.npz", **arrays)
    model = tmp_path / "small.net"
    model.write_text(MODEL.format(data="d.npz"))
    args = ["--params", str(tmp_path / "p.npz")] if command == "eval" else ["--no-progress"]
    if command == "eval":
        np.savez(tmp_path / "p.npz", W=np.zeros((6, 3), np.float32))
    assert main([command, str(model), *args]) == 2
    return capsys.readouterr().err


def samples(n: int, features: int = 6, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, features)), "y": rng.integers(0, classes, n)}


def test_samples_of_another_shape_point_at_the_input(tmp_path, capsys):
    err = run(tmp_path, "train", capsys, **samples(20, features=7))
    assert err.splitlines() == [
        f"{tmp_path / 'small.net'}:3:7: error: d: array 'x' holds samples of shape [7] but input x takes [6] per sample",
        "    input x : f32[B, 6]", "          ^"]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_labels_beyond_the_models_classes_point_at_the_loss(tmp_path, capsys, command):
    data = samples(20)
    data["y"][::2] = 5  # in both splits
    err = run(tmp_path, command, capsys, **data)
    head, line, caret = err.splitlines()
    assert head.startswith(f"{tmp_path / 'small.net'}:")
    assert "d: label 5 of" in head and "out of range" in head and "takes 3 classes (labels 0..2)" in head
    assert line.strip().startswith(("loss", "metric"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_name_the_sample_and_feature(tmp_path, bad):
    data = samples(10)
    data["x"][7, 2] = bad
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(DataError, match=rf"d.npz: x\[7, 2\] is {bad}, not a finite number"):
        load_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize("name,expect", [
    ("empty.csv", "empty.csv: no data rows"),
    ("empty.csv.gz", "empty.csv.gz: no data rows"),
    ("empty.npz", "empty.npz: not a readable .npz archive"),
    ("idx/train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz: wrong IDX magic number none"),
])
def test_empty_files(tmp_path, name, expect):
    (tmp_path / "idx").mkdir()
    for base in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / "idx" / f"{base}.gz").write_bytes(gzip.compress(b"not read: the first fails"))
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=expect):
        load_dataset(tmp_path / name.split("/")[0])


def test_cut_off_gzip_of_a_csv(tmp_path):
    whole = gzip.compress(b"".join(b"%d,%d,1\n" % (i, i) for i in range(500)))
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="cut.csv.gz: truncated or corrupt gzip data"):
        load_dataset(tmp_path / "cut.csv.gz")
