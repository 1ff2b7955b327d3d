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

Every problem with a file raises DataError naming the file and what is wrong: among them a feature
that is not finite as the model reads it (1e39 is finite in float64 but not in float32), and data
whose numbers would not fit in memory. That is checked before the numbers are read: against the
sizes NPZ and IDX headers declare, and for CSV (read a line at a time, gunzipped as it goes) as the
table grows; a few MB of gzip may declare or decompress to many gigabytes.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.resources
import math
import os
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from graphc.about import PACKAGE_DIR
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
# Loading holds up to about this many times the numbers' size at once (a CSV's rows and their
# concatenation; the float32 copy and the split's).
_PEAK = 3
# Parsing a CSV line can take this many bytes of memory per byte of text (a Python str per field).
_LINE_COST = 64
_CSV_BLOCK = 1 << 20  # bytes of float64 rows parsed into one block


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
        path, name = _bundled_dir() / BUNDLED[spec], spec
    else:
        path = Path(spec)
        if isinstance(spec, str) and not path.exists() and path.name == spec and not path.suffix:
            raise DataError(f"unknown data set '{spec}': not a bundled name "
                            f"(known: {', '.join(sorted(BUNDLED))}) and no such file or directory")
        name = path.resolve().name
        for suffix in (".csv.gz", ".csv", ".npz"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
    try:
        return _load_path(path, name)
    except MemoryError:
        raise DataError(f"{path}: out of memory loading this data set") from None


def _bundled_dir() -> Path:
    """The bundled data folder: package data in an installed wheel, else the repo's data/."""
    packaged = importlib.resources.files("graphc") / "data"
    repo = PACKAGE_DIR.parent / "data"
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


@contextlib.contextmanager
def _open(path: Path) -> Iterator[BinaryIO]:
    """The file as a binary stream, gunzipped as it is read when the name ends in .gz (never whole:
    a few MB of gzip can hold gigabytes); errors opening or reading it become DataError."""
    gz = path.name.lower().endswith(".gz")
    try:
        with path.open("rb") as f, gzip.GzipFile(fileobj=f) if gz else contextlib.nullcontext(f) as s:
            yield s
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _available_memory() -> int | None:
    """Bytes of memory a data set may take: what the kernel calls available, capped by a cgroup's
    limit (a container's own, v2 or v1); None where neither is known."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            found.append(int(Path(limit).read_text()))  # "max" (no limit) is a ValueError
    return min(found, default=None)


def _check_memory(path: Path, nbytes: int, what: str) -> None:
    """Refuses to load `nbytes` of numbers (described by `what`) unless loading them fits in memory."""
    free = _available_memory()
    if free is not None and _PEAK * nbytes > free:
        raise DataError(f"{path}: {what} {_gib(nbytes)} of numbers; loading needs about {_PEAK} "
                        f"times that, more than the {_gib(free)} of memory available")


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


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
    arrays = {role: _read_idx(files[role], magic, "training" if role.endswith("train") else "test")
              for role, (_, magic) in _IDX_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise DataError(f"{files[f'x_{split}']}: header says {len(images)} images but "
                            f"{files[f'y_{split}']} holds {len(labels)} labels")
        if len(images) == 0:
            raise DataError(f"{files[f'x_{split}']}: holds no images")
    return _dataset(name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], 255)


def _read_idx(path: Path, magic: int, split: str) -> np.ndarray:
    ndim = magic & 0xFF
    kind = f"{split} {'images' if ndim == 3 else 'labels'}"
    with _open(path) as f:
        head = f.read(4)
        got = int.from_bytes(head, "big") if len(head) == 4 else None
        if got != magic:
            shown = "none (file shorter than 4 bytes)" if got is None else f"0x{got:08x}"
            raise DataError(f"{path}: wrong IDX magic number {shown}; expected 0x{magic:08x} "
                            f"(uint8 {kind}, {ndim}-D)")
        header = 4 + 4 * ndim
        raw_dims = f.read(header - 4)
        if len(raw_dims) < header - 4:
            raise DataError(f"{path}: truncated IDX header of the {kind} ({4 + len(raw_dims)} "
                            f"bytes, need {header})")
        dims = tuple(int(d) for d in np.frombuffer(raw_dims, ">u4"))
        size = math.prod(dims)
        _check_memory(path, size, "header declares")
        data = f.read(size)
        have = len(data) + sum(map(len, iter(lambda: f.read(1 << 20), b"")))  # counted, not kept
    if have != size:
        relation = "shorter" if have < size else "longer"
        raise DataError(f"{path}: data is {relation} than the {kind} header says: it gives "
                        f"{' x '.join(map(str, dims))} = {size} bytes, file has {have}")
    return np.frombuffer(data, np.uint8).reshape(dims)


# ---- CSV ----

def _load_csv(path: Path, name: str) -> Dataset:
    table, lines = _read_csv(path)
    x = table[:, :-1]
    y = _labels(path, table[:, -1], lambda i: f"line {lines[i]}")
    (stored,), divisor = _stored([x], integral=bool(np.array_equal(x, np.floor(x))))
    check_finite(path, x, stored, lambda i: f"line {lines[i[0]]}, column {i[1] + 1}")
    return _split(path, name, stored, y, divisor)


def _read_csv(path: Path) -> tuple[np.ndarray, array]:
    """The numbers of a CSV file, a float64 row per non-blank line, and the line of each row. Read a
    line at a time into blocks of rows, so that memory follows the table, refused as it grows past
    what memory holds, whatever the file decompresses to."""
    free = _available_memory()
    limit = free // _LINE_COST if free else -1  # the longest line that memory can parse
    blocks: list[np.ndarray] = []
    lines = array("q")
    width = per_block = first = n = 0
    with _open(path) as f:
        for chunk in iter(lambda: f.readline(limit), b""):
            if len(chunk) == limit and not chunk.endswith(b"\n"):
                raise DataError(f"{path}: line {n + 1} is longer than {limit} bytes, more than "
                                "the memory available can parse")
            for raw in chunk.splitlines():  # a lone \r ends a line too (classic Mac files)
                n += 1
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: line {n}: not UTF-8 text (bad byte at column "
                                    f"{e.start + 1})") from None
                if not line.strip():
                    continue
                fields = line.split(",")
                if not width:
                    first, width = n, len(fields)
                    if width < 2:
                        raise DataError(f"{path}: line {n}: need at least one feature and a label, "
                                        f"found {width} field")
                    per_block = max(1, _CSV_BLOCK // (8 * width))
                if len(fields) != width:
                    raise DataError(f"{path}: line {n}: expected {width} comma-separated fields "
                                    f"(as on line {first}), found {len(fields)}")
                row = len(lines) % per_block
                if row == 0:
                    _check_memory(path, (len(lines) + per_block) * width * 8, f"by line {n}, holds")
                    blocks.append(np.empty((per_block, width)))
                try:
                    blocks[-1][row] = fields  # numpy parses the strings
                except ValueError as e:
                    hint = " (CSV files must not have a header row)" if not lines else ""
                    raise DataError(f"{path}: line {n}: non-numeric field: {e}{hint}") from None
                lines.append(n)
    if not lines:
        raise DataError(f"{path}: no data rows")
    blocks[-1] = blocks[-1][: (len(lines) - 1) % per_block + 1]
    return np.concatenate(blocks), lines


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
        ys[yk] = _labels(path, y, lambda i, yk=yk: f"{yk}[{i}]")
    if len({x.shape[1:] for x in xs.values()}) > 1:
        raise DataError(f"{path}: x_train has samples of shape {xs['x_train'].shape[1:]} but "
                        f"x_test has {xs['x_test'].shape[1:]}")
    integral = all(x.dtype.kind in "biu" for x in xs.values())
    x_arrays, divisor = _stored(list(xs.values()), integral)
    for (xk, x), stored in zip(xs.items(), x_arrays):
        check_finite(path, x, stored, lambda i, xk=xk: f"{xk}[{', '.join(map(str, i))}]")
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
            return read_npz_arrays(path, npz, keys)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # Object arrays land here too: they would need pickle, which is never enabled.
            raise DataError(f"{path}: cannot read arrays ({e})") from None


def read_npz_arrays(path: Path, npz: np.lib.npyio.NpzFile,
                    keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an open .npz, read once their .npy headers show that they fit in memory
    (a small compressed file may declare gigabytes). A member that is no .npy array, which NpzFile
    would return as bytes, is a ValueError like other unreadable ones."""
    _check_memory(path, sum(_declared_bytes(npz, k) for k in keys), "arrays declare")
    return {k: npz[k] for k in keys}


def _declared_bytes(npz: np.lib.npyio.NpzFile, key: str) -> int:
    """The size array `key` of an .npz declares in its .npy header, read without its data."""
    member = key if key in npz.zip.namelist() else f"{key}.npy"  # as NpzFile finds it
    with npz.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(f)  # 3.0 differs in encoding
    return math.prod(shape) * dtype.itemsize


# ---- shared checks and assembly ----

def check_finite(path: str | os.PathLike, raw: np.ndarray, cast: np.ndarray,
                 where: Callable[[tuple[int, ...]], str]) -> None:
    """Refuses a NaN or Inf in `cast`, the numbers `raw` as they are used (float32, say), naming
    where the first one is (`where` of its index) and whether it overflowed in the conversion."""
    if cast.dtype.kind != "f":
        return
    finite = np.isfinite(cast)
    if finite.all():
        return
    i = tuple(int(k) for k in np.unravel_index(np.argmin(finite), finite.shape))  # the first False
    value = raw[i]
    why = ("not a finite number" if not np.isfinite(value) else
           f"beyond {cast.dtype}'s range (±{np.finfo(cast.dtype).max:.3g})")
    raise DataError(f"{path}: {where(i)} is {value!s}, {why}")  # !s: format() would round to float


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
    with np.errstate(over="ignore", invalid="ignore"):  # check_finite names what overflows
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
