"""Loads training data sets: bundled ones by name, or MNIST IDX directories, CSV and NPZ files.

`load_dataset(spec)` accepts:
  * a bundled name: "mnist" (60,000 / 10,000 28x28 images) or "digits" (1,797 8x8 images);
    a plain name wins over a same-named local path, so write "./mnist" to load a local folder;
  * a directory holding the four MNIST IDX files (train/t10k, images-idx3/labels-idx1, each
    optionally gzipped);
  * a .csv or .csv.gz file: no header, one sample per line, features then the label last;
  * a .npz file holding x_train, y_train, x_test, y_test, or just x and y.

CSV files and single-split NPZ files (x, y) are split deterministically: a fixed permutation from
np.random.default_rng(0), whose last 20% (at least one sample) is the test set.

Features (`x_train`, `x_test`) are float32 and C-contiguous, shaped [N, ...] by the sample's natural
shape (MNIST [N, 28, 28], CSV [N, F]); labels come back int32. Features are scaled so that raw pixel
data lands in [0, 1] without the user choosing a transform:
  * IDX data (uint8) is divided by 255;
  * integer-valued CSV features and integer-dtype NPZ features are divided by their maximum over
    the whole file when that maximum is > 1 (the bundled digits: / 16);
  * float features (non-integral CSV values, float NPZ arrays) are used as given.
Integer data in [0, 255] is kept as its bytes (`raw_train`, `raw_test`: uint8, with `divisor`), a
quarter of float32's memory; the trainer's feed converts each batch (codegen/feed.py), and the
float features are made, float32(byte) / divisor, only when asked for. Other data is kept as its
float32 features (divisor 1).

Every problem with a file raises DataError naming the file and what is wrong.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import math
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import graphc
from graphc.errors import DataError

BUNDLED = {"mnist": "mnist", "digits": "digits/digits.csv.gz"}

# Split role -> (IDX file name without .gz, magic: 0x08 = uint8 data, low byte = number of dims).
_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", 0x00000803),
    "y_train": ("train-labels-idx1-ubyte", 0x00000801),
    "x_test": ("t10k-images-idx3-ubyte", 0x00000803),
    "y_test": ("t10k-labels-idx1-ubyte", 0x00000801),
}
_NPZ_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
TEST_FRACTION = 0.2
_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class Dataset:
    name: str
    raw_train: np.ndarray  # [N, ...] natural sample shape: uint8 bytes, or float32 features
    y_train: np.ndarray    # int32 [N]
    raw_test: np.ndarray
    y_test: np.ndarray
    num_classes: int       # max label + 1 over both splits
    divisor: float = 1.0   # features = float32(raw) / divisor

    @functools.cached_property
    def x_train(self) -> np.ndarray:
        """The training features, float32."""
        return self.features(self.raw_train)

    @functools.cached_property
    def x_test(self) -> np.ndarray:
        """The test features, float32."""
        return self.features(self.raw_test)

    def features(self, raw: np.ndarray) -> np.ndarray:
        """float32 features of some of this data set's raw samples."""
        return raw if raw.dtype == np.float32 else np.divide(raw, np.float32(self.divisor), dtype=np.float32)


def load_dataset(spec: str | os.PathLike) -> Dataset:
    """Loads a bundled data set by name, or an MNIST directory / .csv / .csv.gz / .npz path."""
    if isinstance(spec, str) and spec in BUNDLED:
        return _load_path(_bundled_dir() / BUNDLED[spec], spec)
    path = Path(spec)
    if isinstance(spec, str) and not path.exists() and path.name == spec and not path.suffix:
        raise DataError(f"unknown data set '{spec}': not a bundled name "
                        f"(known: {', '.join(sorted(BUNDLED))}) and no such file or directory")
    name = path.resolve().name
    for suffix in (".csv.gz", ".csv", ".npz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return _load_path(path, name)


def _bundled_dir() -> Path:
    """The bundled data folder: package data in an installed wheel, else the repo's data/."""
    packaged = importlib.resources.files("graphc") / "data"
    repo = Path(graphc.__file__).resolve().parent.parent / "data"
    for candidate in (packaged, repo):
        # A zipped install yields a non-Path Traversable; the loaders need real files.
        if isinstance(candidate, Path) and candidate.is_dir():
            return candidate
    raise DataError(f"bundled data folder not found (looked in {packaged} and {repo})")


def _load_path(path: Path, name: str) -> Dataset:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (expected an MNIST IDX directory, "
                        "a .csv / .csv.gz file, or a .npz file)")
    if path.is_dir():
        return _load_idx_dir(path, name)
    lower = path.name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return _load_csv(path, name)
    if lower.endswith(".npz"):
        return _load_npz(path, name)
    raise DataError(f"{path}: unsupported data file (expected an MNIST IDX directory, "
                    "a .csv / .csv.gz file, or a .npz file)")


def _read_bytes(path: Path) -> bytes:
    """The file's contents, gunzipped when the name ends in .gz."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    if not path.name.lower().endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, zlib.error, OSError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None


# ---- MNIST IDX ----

def _load_idx_dir(path: Path, name: str) -> Dataset:
    files: dict[str, Path] = {}
    for role, (base, _) in _IDX_FILES.items():
        found = [p for p in (path / f"{base}.gz", path / base) if p.is_file()]
        if found:
            files[role] = found[0]
    if len(files) < len(_IDX_FILES):
        missing = [f"{base}[.gz]" for role, (base, _) in _IDX_FILES.items() if role not in files]
        expected = ", ".join(f"{base}[.gz]" for base, _ in _IDX_FILES.values())
        raise DataError(f"{path}: not an MNIST IDX directory: missing {', '.join(missing)} "
                        f"(expected {expected})")
    arrays = {role: _read_idx(files[role], magic) for role, (_, magic) in _IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise DataError(f"{files[f'x_{split}']}: header says {len(images)} images but "
                            f"{files[f'y_{split}']} holds {len(labels)} labels")
        if len(images) == 0:
            raise DataError(f"{files[f'x_{split}']}: holds no images")
    return _dataset(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], 255)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    buf = _read_bytes(path)
    ndim = magic & 0xFF
    kind = "images" if ndim == 3 else "labels"
    got = int.from_bytes(buf[:4], "big") if len(buf) >= 4 else None
    if got != magic:
        shown = "none (file shorter than 4 bytes)" if got is None else f"0x{got:08x}"
        raise DataError(f"{path}: wrong IDX magic number {shown}; expected 0x{magic:08x} "
                        f"(uint8 {kind}, {ndim}-D)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(buf, ">u4", ndim, 4))
    size = math.prod(dims)
    have = len(buf) - header
    if have != size:
        relation = "shorter" if have < size else "longer"
        raise DataError(f"{path}: data is {relation} than the header says: header gives "
                        f"{' x '.join(map(str, dims))} = {size} bytes, file has {have}")
    return np.frombuffer(buf, np.uint8, size, header).reshape(dims)


# ---- CSV ----

def _load_csv(path: Path, name: str) -> Dataset:
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    rows = [(n, line.split(",")) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise DataError(f"{path}: no data rows")
    first_line, first = rows[0]
    width = len(first)
    if width < 2:
        raise DataError(f"{path}: line {first_line}: need at least one feature and a label, "
                        f"found {width} field")
    table = np.empty((len(rows), width))
    for i, (line, fields) in enumerate(rows):
        if len(fields) != width:
            raise DataError(f"{path}: line {line}: expected {width} comma-separated fields "
                            f"(as on line {first_line}), found {len(fields)}")
        try:
            table[i] = fields  # numpy parses the strings; row-wise keeps the line number at hand
        except ValueError as e:
            hint = " (CSV files must not have a header row)" if i == 0 else ""
            raise DataError(f"{path}: line {line}: non-numeric field: {e}{hint}") from None
    def line_of(i: int) -> str:
        return f"line {rows[i][0]}"

    x = table[:, :-1]
    _check_finite(path, x, line_of)
    y = _labels(path, table[:, -1], line_of)
    (x,), divisor = _stored([x], integral=bool(np.array_equal(x, np.floor(x))))
    return _split(path, name, x, y, divisor)


# ---- NPZ ----

def _load_npz(path: Path, name: str) -> Dataset:
    arrays = _read_npz(path)
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: array '{key}' has dtype {a.dtype}; expected numbers")
    xs = {k: a for k, a in arrays.items() if k.startswith("x")}
    ys: dict[str, np.ndarray] = {}
    for xk, x in xs.items():
        yk = "y" + xk[1:]
        y = arrays[yk]
        if x.ndim < 2 or x.shape[0] == 0 or x[0].size == 0:
            raise DataError(f"{path}: array '{xk}' has shape {x.shape}; expected [N, features...] "
                            "with N > 0 and at least one feature")
        if y.shape != (len(x),):
            raise DataError(f"{path}: array '{yk}' has shape {y.shape}; expected ({len(x)},) "
                            f"to match '{xk}'")
        _check_finite(path, x, lambda i, xk=xk: f"sample {xk}[{i}]")
        ys[yk] = _labels(path, y, lambda i, yk=yk: f"{yk}[{i}]")
    if len({x.shape[1:] for x in xs.values()}) > 1:
        raise DataError(f"{path}: x_train has samples of shape {xs['x_train'].shape[1:]} but "
                        f"x_test has {xs['x_test'].shape[1:]}")
    integral = all(x.dtype.kind in "biu" for x in xs.values())
    x_arrays, divisor = _stored(list(xs.values()), integral)
    if "x" in xs:
        return _split(path, name, x_arrays[0], ys["y"], divisor)
    return _dataset(name, x_arrays[0], ys["y_train"], x_arrays[1], ys["y_test"], divisor)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays a data set needs, in split order (x_train, y_train, x_test, y_test or x, y)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    if isinstance(npz, np.ndarray):
        raise DataError(f"{path}: holds a single .npy array, not an .npz archive of named arrays")
    with npz:
        present = set(npz.files)
        if set(_NPZ_SPLIT_KEYS) <= present:
            keys: tuple[str, ...] = _NPZ_SPLIT_KEYS
        elif {"x", "y"} <= present:
            keys = ("x", "y")
        else:
            raise DataError(f"{path}: expected arrays x_train, y_train, x_test, y_test (or x, y); "
                            f"found {', '.join(sorted(present)) or 'none'}")
        try:
            return {k: npz[k] for k in keys}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # Object arrays land here too: they would need pickle, which is never enabled.
            raise DataError(f"{path}: cannot read arrays ({e})") from None


# ---- shared checks and assembly ----

def _check_finite(path: Path, x: np.ndarray, where: Callable[[int], str]) -> None:
    if x.dtype.kind != "f":
        return
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        raise DataError(f"{path}: {where(int(bad[0]))}: features contain NaN or Inf")


def _labels(path: Path, y: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """Checks that labels are non-negative integers that fit int32; returns them as int32."""
    yf = y.astype(np.float64)  # one check for int and float labels; exact below 2**53
    bad = np.flatnonzero(~np.isfinite(yf) | (yf < 0) | (yf != np.floor(yf)) | (yf > _INT32_MAX))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: {where(i)}: label {y[i].item()!r} is not a non-negative integer")
    return y.astype(np.int32)


def _stored(xs: list[np.ndarray], integral: bool) -> tuple[list[np.ndarray], float]:
    """The arrays as a Dataset keeps them, and their divisor: integer data is divided by its maximum
    over the file when that is > 1, and kept as bytes when it fits them; other data as float32."""
    peak = max(float(x.max()) for x in xs)
    divisor = peak if integral and peak > 1 else 1.0
    if integral and min(float(x.min()) for x in xs) >= 0 and peak <= 255:
        return [x.astype(np.uint8) for x in xs], divisor
    return [np.divide(x, np.float32(divisor), dtype=np.float32) for x in xs], 1.0


def _split(path: Path, name: str, x: np.ndarray, y: np.ndarray, divisor: float) -> Dataset:
    """Splits one sample set by a fixed permutation: the last TEST_FRACTION is the test set."""
    n = len(x)
    if n < 2:
        raise DataError(f"{path}: {n} sample(s); need at least 2 to split into train and test")
    order = np.random.default_rng(0).permutation(n)
    n_test = max(1, int(n * TEST_FRACTION))
    train, test = order[:-n_test], order[-n_test:]
    return _dataset(name, x[train], y[train], x[test], y[test], divisor)


def _dataset(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
             y_test: np.ndarray, divisor: float) -> Dataset:
    return Dataset(
        name=name,
        raw_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train, dtype=np.int32),
        raw_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test, dtype=np.int32),
        num_classes=int(max(y_train.max(), y_test.max())) + 1,
        divisor=divisor,
    )
