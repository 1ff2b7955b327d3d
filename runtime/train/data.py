"""Loads data sets as named arrays, split into training, validation and test samples.

`load_dataset(spec)` accepts:
  * a bundled name: "mnist" (60,000 / 10,000 28x28 images) or "digits" (1,797 8x8 images);
    a plain name wins over a same-named local path, so write "./mnist" to load a local folder;
  * a directory holding the four MNIST IDX files (train/t10k, images-idx3/labels-idx1, each
    optionally gzipped), or a directory of .npy files (one array per file, named by its stem);
  * a .csv or .csv.gz file, one sample per line: without a header, features then the label last
    (arrays `x` and `y`); with one (a first line that is not all numbers), arrays named by it: a
    column NAME is an array of its own, and columns NAME0, NAME1, ... (or NAME_0, ..., two or more,
    numbered from 0 or 1) or NAME[i, j, ...] (what graphc predict writes) are the elements of
    array NAME, [N, k] or [N, k, l, ...];
  * a .npz file of named arrays;
  * text: "jargon" (the Jargon File 4.4.7, 1.7 MB) or a .txt or .txt.gz file of UTF-8 text.

Every source becomes named arrays of samples, [N, ...]: images and labels are `x` and `y` (IDX,
headerless CSV), an .npz or .npy array is named by its key or file, a CSV header's array by its
columns (Origin.columns says which, for messages). A name ending in `_train`, `_val` or
`_test` puts the array in that split (`x_train`, `x_test`, ...); arrays without such a suffix are
split deterministically: a fixed permutation from np.random.default_rng(0), whose last 20% (at least
one sample) is the test set. `test` and `validation` work alike, one mechanism for both: a fraction
of the training samples held out the same way (the test split first, then validation from what is
left), or a file whose arrays are that split (its messages name that file: Dataset.origins).

Text is byte-level data for a language model (Dataset.text): its bytes are the tokens, the first
90% train and the last 10% validate (there is no test split), and each split holds two streams of
bytes, `x` and `y`, y being x shifted by one byte; runtime/train/feeds.py cuts them into the windows
of T bytes a model's inputs take.

Arrays are kept as the source holds them: nothing is scaled here (a model declares its scaling, and
runtime/train/feeds.py applies it, feeding each input by name). CSV numbers that are whole and in
[0, 255] are kept as bytes (a quarter of float32's memory), other features as float32, and whole
labels as int32.

Every problem with a file raises DataError naming the file and what is wrong: among them a feature
that is not finite as the model reads it (1e39 is finite in float64 but not in float32), and data
whose numbers would not fit in memory. That is checked before the numbers are read: against the
sizes NPZ, NPY and IDX headers declare, and for CSV (read a line at a time, gunzipped as it goes) as
the table grows; a few MB of gzip may declare or decompress to many gigabytes.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.resources
import io
import math
import os
import re
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphc.about import PACKAGE_DIR
from graphc.errors import DataError, InternalError, check_regular

BUNDLED = {"mnist": "mnist", "digits": "digits/digits.csv.gz", "jargon": "text/jargon-4.4.7.txt.gz"}
TEXT = (".txt", ".txt.gz")  # the names of text files
TEXT_VALIDATION = 0.1  # the last tenth of a text's bytes validates

# Split role -> (IDX file name without .gz, magic: 0x08 = uint8 data, low byte = number of dims).
_IDX_FILES = {
    "x_train": ("train-images-idx3-ubyte", 0x00000803),
    "y_train": ("train-labels-idx1-ubyte", 0x00000801),
    "x_test": ("t10k-images-idx3-ubyte", 0x00000803),
    "y_test": ("t10k-labels-idx1-ubyte", 0x00000801),
}
TEST_FRACTION = 0.2
_INT32_MAX = np.iinfo(np.int32).max
# Loading holds up to about this many times the numbers' size at once (a CSV's rows and their
# concatenation; the float32 copy and the split's).
_PEAK = 3
# Parsing a CSV line can take this many bytes of memory per byte of text (a Python str per field).
_LINE_COST = 64
_CSV_BLOCK = 1 << 20  # bytes of float64 rows parsed into one block
_TEXT_CHUNK = 1 << 20  # bytes of text read at a time


_SUFFIXES = {"train": "train", "validation": "val", "test": "test"}  # split -> the suffix placing an array in it


@dataclass
class Origin:
    """Where arrays were read, for messages: the data's name and, for a CSV file with a header, the
    columns each array holds ("columns x0..x3", "column 5")."""

    name: str
    columns: dict[str, str] = field(default_factory=dict)


@dataclass
class Dataset:
    """Named arrays of samples ([N, ...], as the source holds them) for each split."""

    name: str
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    validation: dict[str, np.ndarray] | None = None
    text: bool = False  # byte-level text: each split's arrays are streams of bytes, x and y = x + 1
    origins: dict[str, Origin] = field(default_factory=dict)  # split -> where it was read, if known

    def splits(self) -> dict[str, dict[str, np.ndarray]]:
        """The splits that hold samples: "train", then "validation" if any, then "test"."""
        out = {"train": self.train, "validation": self.validation, "test": self.test}
        return {k: v for k, v in out.items() if v}

    def origin(self, split: str) -> Origin:
        """Where split `split` ("train", "validation", "test") was read."""
        return self.origins.get(split) or Origin(self.name)


def load_dataset(spec: str | os.PathLike, validation: float | str | os.PathLike | None = None,
                 test: float | str | os.PathLike | None = None) -> Dataset:
    """A bundled data set by name, or a directory / .csv / .csv.gz / .npz path, split. `validation`
    and `test` each give that split: a fraction of the training samples to hold out, or a file whose
    arrays are its samples. Without `test`, arrays that name no split hold out TEST_FRACTION."""
    name, path = _locate(spec)
    held = {"test": test, "validation": validation}
    if path.name.lower().endswith(TEXT):
        given = [k for k, v in held.items() if v is not None]
        if given:
            raise DataError(f"{name}: text validates on its last {TEXT_VALIDATION:.0%}; drop "
                            f"{given[0]} (text has no test split)")
        return _load_text(name, path)
    arrays, columns = _arrays(path)
    splits = _splits(str(spec), arrays)
    origins = dict.fromkeys(("train", "validation", "test"), Origin(name, columns))
    if test is None and not any(_suffix(k) for k in arrays):
        held["test"] = TEST_FRACTION
    for split, source in held.items():  # the test split first: validation is held out of what trains
        if source is None:
            continue
        if split in splits:
            raise DataError(f"{name}: holds a {split} split (arrays ending in _{_SUFFIXES[split]}) "
                            f"already; drop {split} = ... or those arrays")
        if isinstance(source, float):
            splits["train"], splits[split] = _held_out(str(spec), splits["train"], source, split)
        else:
            origins[split], splits[split] = load_arrays(source)
            _count(str(source), splits[split])
    if "test" not in splits:
        raise DataError(f"{spec}: no test split: arrays ending in _train go with arrays ending in "
                        f"_test, or a file of test samples (test = \"FILE\", --test FILE) "
                        f"(found {', '.join(arrays)})")
    return Dataset(name, splits["train"], splits["test"], splits.get("validation"), origins=origins)


def load_arrays(spec: str | os.PathLike) -> tuple[Origin, dict[str, np.ndarray]]:
    """Where the data set's arrays were read, and its arrays by name, as the source holds them
    (not split)."""
    name, path = _locate(spec)
    arrays, columns = _arrays(path)
    return Origin(name, columns), arrays


def _locate(spec: str | os.PathLike) -> tuple[str, Path]:
    """A data set's name and path: a bundled one's, or the path named by its stem."""
    if isinstance(spec, str) and spec in BUNDLED:
        return spec, _bundled_dir() / BUNDLED[spec]
    path = Path(spec)
    if isinstance(spec, str) and not path.exists() and path.name == spec and not path.suffix:
        raise DataError(f"unknown data set '{spec}': not a bundled name "
                        f"(known: {', '.join(sorted(BUNDLED))}) and no such file or directory")
    name = path.resolve().name
    for suffix in (".csv.gz", ".csv", ".npz", ".npy", ".txt.gz", ".txt"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], path
    return name, path


def _arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A source's arrays, and the CSV header columns each was read from (Origin.columns)."""
    try:
        return _load_path(path)
    except MemoryError:
        raise DataError(f"{path}: out of memory loading this data set") from None


def _splits(name: str, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Arrays grouped by their split suffix ("train", "validation", "test"); unsuffixed ones all
    train (load_dataset holds out the rest)."""
    splits: dict[str, dict[str, np.ndarray]] = {}
    plain = {}
    for key, a in arrays.items():
        split = _suffix(key)
        if split:
            splits.setdefault(split, {})[key.rpartition("_")[0]] = a
        else:
            plain[key] = a
    if plain and splits:
        raise DataError(f"{name}: arrays {', '.join(plain)} have no split suffix but "
                        f"{', '.join(k for k in arrays if k not in plain)} do: name every array "
                        "NAME_train / NAME_val / NAME_test, or none (a fixed 20% is then the test split)")
    if plain:
        splits["train"] = plain
    if "train" not in splits:
        raise DataError(f"{name}: no train split: arrays ending in _train go with arrays ending in "
                        f"_test (found {', '.join(arrays)})")
    for split, group in splits.items():
        _count(f"{name} ({split} split)", group)
    return splits


def _suffix(key: str) -> str | None:
    """The split an array's name puts it in ("train", "validation", "test"), if any."""
    base, _, suffix = key.rpartition("_")
    return next((split for split, s in _SUFFIXES.items() if s == suffix), None) if base else None


def _count(where: str, arrays: dict[str, np.ndarray]) -> int:
    """The number of samples `arrays` hold, the same in each (checked)."""
    sizes = {k: len(a) if a.ndim else 0 for k, a in arrays.items()}
    if len(set(sizes.values())) > 1 or 0 in sizes.values():
        raise DataError(f"{where}: every array needs the same number of samples, at least one: "
                        + ", ".join(f"{k} has {n}" for k, n in sizes.items()))
    return next(iter(sizes.values()))


def _held_out(name: str, arrays: dict[str, np.ndarray], fraction: float,
              what: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Splits samples by a fixed permutation: the last `fraction` (at least one) is held out."""
    n = _count(name, arrays)
    if n < 2:
        raise DataError(f"{name}: {n} sample(s); need at least 2 to hold out a {what} split")
    order = np.random.default_rng(0).permutation(n)
    k = max(1, int(n * fraction))
    keep, held = order[:-k], order[-k:]
    return ({k_: np.ascontiguousarray(a[keep]) for k_, a in arrays.items()},
            {k_: np.ascontiguousarray(a[held]) for k_, a in arrays.items()})


def _bundled_dir() -> Path:
    """The bundled data folder: package data in an installed wheel, else the repo's data/."""
    packaged = importlib.resources.files("graphc") / "data"
    repo = PACKAGE_DIR.parent / "data"
    for candidate in (packaged, repo):
        # A zipped install yields a non-Path Traversable; the loaders need real files.
        if isinstance(candidate, Path) and candidate.is_dir():
            return candidate
    raise DataError(f"bundled data folder not found (looked in {packaged} and {repo})")


_KINDS = "an MNIST IDX directory, a directory of .npy files, a .csv / .csv.gz file, or a .npz file"


def _load_path(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (expected {_KINDS})")
    if path.is_dir():
        npys = sorted(path.glob("*.npy"))
        return _load_npys(path, npys) if npys else _load_idx_dir(path), {}
    lower = path.name.lower()
    if lower.endswith((".csv", ".csv.gz")):
        return _load_csv(path)
    if lower.endswith(".npz"):
        return _load_npz(path), {}
    if lower.endswith(TEXT):
        raise DataError(f"{path}: text trains and evaluates a language model (graphc train, eval; "
                        "graphc sample generates text); this command reads arrays")
    raise DataError(f"{path}: unsupported data file (expected {_KINDS})")


@contextlib.contextmanager
def _open(path: Path) -> Iterator[io.BufferedIOBase]:
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


# ---- text ----

def _load_text(name: str, path: Path) -> Dataset:
    """A text file's bytes as a language model's data: the first 90% train, the last 10% validate."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a text file")
    chunks, size = [], 0
    with _open(path) as f:
        for chunk in iter(lambda: f.read(_TEXT_CHUNK), b""):  # memory checked as it grows (gunzipped)
            size += len(chunk)
            _check_memory(path, size, "by now holds")
            chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise DataError(f"{path}: holds no text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte {e.start} (line {line}) is "
                        f"0x{data[e.start]:02x} ({e.reason})") from None
    tokens = np.frombuffer(data, np.uint8)
    cut = len(tokens) - int(len(tokens) * TEXT_VALIDATION)
    train, validation = tokens[:cut], tokens[cut:]
    return Dataset(name, {"x": train[:-1], "y": train[1:]}, {},
                   {"x": validation[:-1], "y": validation[1:]}, text=True)


# ---- MNIST IDX ----

def _load_idx_dir(path: Path) -> dict[str, np.ndarray]:
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
    return {k: a.astype(np.int32) if k.startswith("y") else a for k, a in arrays.items()}


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

def _load_csv(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A CSV file's arrays, and for a header's arrays the columns each was read from."""
    header, table, lines = _read_csv(path)
    if header is None:  # features, then the label last
        x, y = table[:, :-1], table[:, -1]
        return ({"x": _numbers(path, x, lambda i: f"line {lines[i[0]]}, column {i[1] + 1}"),
                 "y": _numbers(path, y, lambda i: f"line {lines[i[0]]}, column {table.shape[1]}")}, {})
    arrays, columns = {}, {}
    for name, (cols, shape) in _header_arrays(path, header).items():
        def where(i: tuple[int, ...], cols: list[int] = cols, shape: tuple[int, ...] = shape) -> str:
            col = cols[int(np.ravel_multi_index(i[1:], shape)) if shape else 0]
            return f"line {lines[i[0]]}, column {col + 1} ({header[col]})"
        arrays[name] = _numbers(path, table[:, cols].reshape((len(table),) + shape), where)
        columns[name] = (f"column {cols[0] + 1}" if not shape else
                         f"columns {header[cols[0]]}..{header[cols[-1]]}")
    return arrays, columns


# a column that is one element of an array: NAME[i] or NAME[i, j] (what graphc predict writes),
# NAME_i or NAMEi (grouped when two or more columns share NAME)
_BRACKETED = re.compile(r"(.+?)\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_NUMBERED = re.compile(r"(.*?[^\d_]_?)(\d+)")


def _header_arrays(path: Path, header: list[str]) -> dict[str, tuple[list[int], tuple[int, ...]]]:
    """The arrays a header names: each array's columns (in element order) and per-sample shape, ()
    for a column of its own. Columns NAME[i, ...], and NAME_i or NAMEi where two or more share NAME,
    are the elements of array NAME, numbered from 0 (or 1) on every axis, in any order in the file."""
    seen: dict[str, int] = {}
    for col, field in enumerate(header):
        if not field:
            raise DataError(f"{path}: line 1 (the header): column {col + 1} has no name")
        if field in seen:
            raise DataError(f"{path}: the header names column {field} twice (columns "
                            f"{seen[field] + 1} and {col + 1})")
        seen[field] = col
    numbered: dict[str, list[tuple[int, int]]] = {}  # NAME_ or NAME -> (index, column) numbered after it
    elements: list[tuple[str, tuple[int, ...], int]] = []  # (array, index, column)
    for col, field in enumerate(header):
        bracketed, number = _BRACKETED.fullmatch(field), _NUMBERED.fullmatch(field)
        if bracketed:
            elements.append((bracketed[1], tuple(int(k) for k in bracketed[2].split(",")), col))
        elif number:
            numbered.setdefault(number[1], []).append((int(number[2]), col))
    for stem, members in numbered.items():
        if len(members) > 1:
            elements += [(stem[:-1] if stem.endswith("_") else stem, (i,), col) for i, col in members]
    grouped = {col for _, _, col in elements}
    out: dict[str, tuple[list[int], tuple[int, ...]]] = {
        field: ([col], ()) for col, field in enumerate(header) if col not in grouped}
    groups: dict[str, dict[tuple[int, ...], int]] = {}
    for name, index, col in elements:
        group = groups.setdefault(name, {})
        if name in out:
            raise DataError(f"{path}: the header's column {name} and its column {header[col]} both "
                            f"name array {name}")
        if index in group:
            raise DataError(f"{path}: the header's columns {header[group[index]]} and {header[col]} "
                            f"are the same element of array {name}")
        group[index] = col
    out |= {name: _grid(path, name, group, header) for name, group in groups.items()}
    return dict(sorted(out.items(), key=lambda item: min(item[1][0])))  # in the file's order


def _grid(path: Path, name: str, group: dict[tuple[int, ...], int],
          header: list[str]) -> tuple[list[int], tuple[int, ...]]:
    """A group's columns in element order and its shape: its indices must fill a grid numbered
    from 0 (or from 1) on every axis."""
    ranks = sorted({len(i) for i in group})
    columns = ", ".join(header[c] for c in sorted(group.values()))
    if len(ranks) > 1:
        raise DataError(f"{path}: the header's columns for array {name} ({columns}) mix "
                        f"{' and '.join(map(str, ranks))} indices")
    first = min(min(i) for i in group)
    shape = tuple(max(i[axis] for i in group) - first + 1 for axis in range(ranks[0]))
    order = [tuple(k + first for k in i) for i in np.ndindex(*shape)]
    missing = next((i for i in order if i not in group), None)
    if first > 1 or missing is not None:
        what = f"start at {first}" if first > 1 else f"lack element {list(missing or ())}"
        raise DataError(f"{path}: the header's columns for array {name} ({columns}) {what}: number "
                        "them from 0 (or 1) without gaps")
    return [group[i] for i in order], shape


def _numbers(path: Path, a: np.ndarray, where: Callable[[tuple[int, ...]], str]) -> np.ndarray:
    """CSV numbers as they are kept: whole numbers in [0, 255] as bytes, other whole numbers that
    fit as int32, the rest as float32 (checked finite)."""
    if np.isfinite(a).all() and np.array_equal(a, np.floor(a)):
        if a.min() >= 0 and a.max() <= 255:
            return a.astype(np.uint8)
        if np.abs(a).max() <= _INT32_MAX:
            return a.astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = a.astype(np.float32)
    check_finite(path, a, cast, where)
    return cast


def _header(line: str) -> list[str] | None:
    """The column names of a first line that is not all numbers (parsed as CSV: names may be
    quoted), else None."""
    fields = line.split(",")
    try:
        for f in fields:
            float(f)
    except ValueError:
        return [name.strip() for name in next(csv.reader([line]))]
    return None


def _read_csv(path: Path) -> tuple[list[str] | None, np.ndarray, array]:
    """A CSV file's header (its first line, if that is not all numbers), its numbers, a float64 row
    per other non-blank line, and the line of each row. Read a line at a time into blocks of rows,
    so that memory follows the table, refused as it grows past what memory holds, whatever the
    file decompresses to."""
    free = _available_memory()
    limit = free // _LINE_COST if free else -1  # the longest line that memory can parse
    blocks: list[np.ndarray] = []
    lines = array("q")
    header: list[str] | None = None
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
                    header = _header(line)
                    first, width = n, len(header or fields)
                    if header is None and width < 2:
                        raise DataError(f"{path}: line {n}: need at least one feature and a label, "
                                        f"found {width} field (or a header naming the columns)")
                    per_block = max(1, _CSV_BLOCK // (8 * width))
                    if header is not None:
                        continue
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
                    raise DataError(f"{path}: line {n}: non-numeric field: {e}") from None
                lines.append(n)
    if not lines:
        raise DataError(f"{path}: no data rows")
    blocks[-1] = blocks[-1][: (len(lines) - 1) % per_block + 1]
    return header, np.concatenate(blocks), lines


# ---- NPZ ----

def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    if isinstance(npz, np.ndarray):
        raise DataError(f"{path}: holds a single .npy array, not an .npz archive of named arrays")
    with npz:
        if not npz.files:
            raise DataError(f"{path}: holds no arrays")
        try:
            return _checked(path, read_npz_arrays(path, npz, npz.files))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # Object arrays land here too: they would need pickle, which is never enabled.
            raise DataError(f"{path}: cannot read arrays ({e})") from None


def _load_npys(path: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """A directory of .npy files: one array per file, named by its stem."""
    arrays = {}
    for f in files:
        try:
            check_regular(f)
            with f.open("rb") as s:
                version = np.lib.format.read_magic(s)
                shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)(s)
            _check_memory(f, math.prod(shape) * dtype.itemsize, "its header declares")
            arrays[f.stem] = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{f}: not a readable .npy array ({e})") from None
    return _checked(path, arrays)


def _checked(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays of numbers with a sample axis; float ones finite."""
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: array '{key}' has dtype {a.dtype}; expected numbers")
        if a.ndim == 0:
            raise DataError(f"{path}: array '{key}' is a scalar; expected samples, [N, ...]")
        check_finite(path, a, a, _element_of(key))
    return arrays


def _element_of(key: str) -> Callable[[tuple[int, ...]], str]:
    """Names element `i` of array `key`, as `key[i, j]`."""
    return lambda i: f"{key}[{', '.join(map(str, i))}]"


def read_npz_arrays(path: Path, npz: np.lib.npyio.NpzFile,
                    keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays `keys` of an open .npz, read once their .npy headers show that they fit in memory
    (a small compressed file may declare gigabytes). A member that is no .npy array, which NpzFile
    would return as bytes, is a ValueError like other unreadable ones."""
    _check_memory(path, sum(_declared_bytes(npz, k) for k in keys), "arrays declare")
    return {k: npz[k] for k in keys}


def _declared_bytes(npz: np.lib.npyio.NpzFile, key: str) -> int:
    """The size array `key` of an .npz declares in its .npy header, read without its data."""
    zf = npz.zip
    if zf is None:  # NpzFile drops its zip only once closed, and callers pass an open one
        raise InternalError(f"{npz.fid}: .npz read after it was closed")
    member = key if key in zf.namelist() else f"{key}.npy"  # as NpzFile finds it
    with zf.open(member) as f:
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
