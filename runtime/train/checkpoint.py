"""Saving and restoring training state: atomic, pickle-free files of named arrays with JSON
metadata, the state of a whole run (RunState: params, optimizer state, RNG, position, data order,
the best validation loss and its params) and the in-memory copy that undoes a bad batch (Rollback).

The file is an ordinary .npz archive, readable by np.load(path, allow_pickle=False): one .npy
member per array (names may contain dots, e.g. "fc1.weight") plus "__meta__", the metadata as
UTF-8 JSON in a uint8 array. Saving writes a temporary file in the target's directory, fsyncs it,
renames it over the target and fsyncs the directory, so a crash leaves either the old file or the
new one, never a torn mix.

A run directory (graphc train --out) holds params.npz, the checkpoint and a lock file: lock_run holds
it for one run at a time and sweeps away the temporary files of a writer that was killed.
"""

from __future__ import annotations

import contextlib
import functools
import fcntl
import json
import math
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TypeGuard, TypeVar

import numpy as np

from graphc.errors import DataError, InternalError, check_regular
from graphc.ir.graph import NP_DTYPES, Param
from graphc.runtime.train.data import check_finite, read_npz_arrays

META_KEY = "__meta__"

_T = TypeVar("_T")


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                meta: dict | None = None) -> None:
    """Atomically writes `arrays` and JSON-serializable `meta` to the .npz file at `path`."""
    path = Path(path)
    for name in arrays:
        if not isinstance(name, str) or not name or name == META_KEY:
            raise ValueError(f"invalid array name {name!r} for checkpoint {path}")
    # Serialize first, so that bad metadata fails before any file is touched.
    meta_bytes = np.frombuffer(json.dumps(meta or {}).encode(), dtype=np.uint8)
    # A fresh name in the same directory (same file system, so os.replace is atomic); opened with
    # "xb" rather than mkstemp so the final file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            # zipfile + write_array is what np.savez does, minus its keyword arguments: a
            # parameter named "file" or "allow_pickle" would collide with them.
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, array in {**arrays, META_KEY: meta_bytes}.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write checkpoint ({e})") from e
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Makes the rename durable; skipped where directories cannot be opened or synced (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_arrays(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a file written by save_arrays: (arrays by name, metadata dict)."""
    path = Path(path)
    check_regular(path)  # a FIFO would block the read
    try:
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.ndarray):
            raise DataError(f"{path}: holds a single .npy array, not a checkpoint archive")
        with npz:
            arrays = read_npz_arrays(path, npz, npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read checkpoint ({e})") from None
    raw = arrays.pop(META_KEY, None)
    if raw is None:
        return arrays, {}
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # nested thousands deep
        raise DataError(f"{path}: corrupt checkpoint metadata ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: checkpoint metadata is a {type(meta).__name__}, not an object")
    return arrays, meta


def load_params(path: str | os.PathLike, params: list[Param], partial: bool = False,
                scale: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """The arrays a model's `params` need, read from a file written by save_arrays (graphc train
    --out, params.npz or the checkpoint); each must be present with the param's shape, hold floats
    (converted to the param's dtype: float64 to float32 is fine where the values fit) and be finite.

    `partial` (starting from saved weights): params the file lacks are left out of the result, and
    an array the file holds that names no param is refused (a different model's file). `scale`,
    the model's declared input scaling, must match the one the file was trained with, if stored."""
    arrays, meta = load_arrays(path)
    if meta.get("format") == FORMAT:  # a run's checkpoint: the model's arrays are its params/
        arrays = {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")}
    stored = (meta.get("config") or {}).get("scale") if meta.get("format") == FORMAT else meta.get("scale")
    if scale is not None and stored is not None and stored != scale:
        raise DataError(f"{path}: these params were trained on inputs scaled {_scaling(stored)}, but "
                        f"the model declares {_scaling(scale)}: new data would be scaled differently")
    names = [p.value.name for p in params]
    if partial:
        unknown = [k for k in arrays if k not in names]
        if unknown:
            raise DataError(f"{path}: holds {unknown[0]}, which is no param of this model "
                            f"(its params: {', '.join(names)})")
        params = [p for p in params if p.value.name in arrays]
    out = {}
    for p in params:
        name, arr = p.value.name, arrays.get(p.value.name)
        if arr is None or arr.shape != tuple(p.value.shape) or arr.dtype.kind != "f":
            got = ("missing" if arr is None else f"has shape {list(arr.shape)}"
                   if arr.shape != tuple(p.value.shape) else f"has dtype {arr.dtype} (not floats)")
            raise DataError(f"{path}: param {name} {got}, model wants {p.value.type}")
        with np.errstate(over="ignore"):  # check_finite names a value that overflows
            out[name] = np.ascontiguousarray(arr, dtype=NP_DTYPES[p.value.dtype])
        check_finite(path, arr, out[name], functools.partial(_param_element, name))
    return out


def _scaling(scale: dict[str, float]) -> str:
    return ", ".join(f"{k} = pixels({v:g})" for k, v in scale.items()) or "not at all"


# ---- the state of a training run ----

CHECKPOINT, PARAMS, LOCK = "checkpoint.npz", "params.npz", ".lock"
FORMAT, VERSION = "graphc-checkpoint", 3  # 3: the best validation loss and its params
# config entries that fingerprint what a run trains (set by the trainer), as people call them
FINGERPRINTS = {"graph_sha256": "the model's training graph", "data_sha256": "the training data"}


@contextlib.contextmanager
def lock_run(directory: Path) -> Iterator[None]:
    """Holds run directory `directory` (created if need be) for one run: an exclusive lock, refused
    while another process holds it (naming its pid, which the lock file records), and released by
    the kernel however the holder ends. Then removes the temporary files save_arrays leaves there
    when killed mid-write: with the lock held, no writer can still be using them."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"{directory}: cannot use as a run directory ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
            raise DataError(f"{directory}: in use by another training run (pid {pid}); wait for it "
                            f"to end or choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for name in (CHECKPOINT, PARAMS):
            for tmp in directory.glob(f".{name}.*.tmp"):  # save_arrays's temporary names
                tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _param_element(name: str, index: tuple[int, ...]) -> str:
    return f"param {name}{list(index) if index else ''}"


@dataclass
class RunState:
    """Everything a training run needs to continue exactly where it was.

    `params` (the model's arrays) and `state` (the step's other state: optimizer moments, the step
    counter) are the compiled step's own buffers, saved from and restored into in place. `rng` draws
    each epoch's sample order: a shuffled pass over the samples, or, with `draw`, that many samples
    for each step, at random (text's windows); `config` holds the settings a resumed run must share
    with the first. A run with a validation split also keeps `best_params`, a copy of the params of
    the epoch with the lowest validation loss so far, and `best`, that (epoch, loss): a resumed run
    keeps comparing against them (params.best.npz, patience) and tests with them at its end.
    """

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    rng: np.random.Generator
    config: dict
    epoch: int = 1                    # the epoch in progress (1-based)
    step: int = 0                     # steps done in it
    order: np.ndarray | None = None   # its sample order, drawn when it starts
    losses: np.ndarray | None = None  # its losses so far; NaN marks a skipped batch
    draw: int | None = None           # samples drawn for each step (with replacement); None: shuffled
    best_params: dict[str, np.ndarray] | None = None  # with a validation split: the best epoch's params
    best: tuple[int, float] | None = None  # (epoch, validation loss) of best_params, once there is one

    def start_epoch(self, samples: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw this epoch's order, unless a resumed run is already in the middle of it; returns the
        epoch's order and its losses so far."""
        if self.order is None or self.losses is None:  # a checkpoint holds both or neither
            self.order = (self.rng.permutation(samples) if self.draw is None
                          else self.rng.integers(samples, size=steps * self.draw))
            self.losses = np.full(steps, np.nan)
        return self.order, self.losses

    def end_epoch(self) -> None:
        self.epoch, self.step, self.order, self.losses = self.epoch + 1, 0, None, None

    def improve(self, epoch: int, loss: float) -> bool:
        """Takes `epoch`'s validation loss: if it is finite and the lowest yet, copies the params
        into best_params and returns True."""
        if self.best_params is None or not math.isfinite(loss) or (self.best and loss >= self.best[1]):
            return False
        self.best = (epoch, loss)
        for k, v in self.params.items():
            np.copyto(self.best_params[k], v)
        return True

    def save(self, directory: Path) -> Path:
        """Atomically writes the checkpoint into `directory`; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        if self.order is not None:
            if self.losses is None:  # start_epoch, restore and end_epoch set and clear both together
                raise InternalError("a run state with an epoch order has no losses")
            arrays |= {"order": self.order, "losses": self.losses}
        meta = {"format": FORMAT, "version": VERSION, "epoch": self.epoch, "step": self.step,
                "rng": self.rng.bit_generator.state, "config": self.config,
                "best": list(self.best) if self.best else None}
        save_arrays(directory / CHECKPOINT, arrays, meta)
        return directory / CHECKPOINT

    def restore(self, directory: Path, samples: int, steps: int) -> None:
        """Continues from the checkpoint in `directory` (`samples` training samples, `steps` batches
        an epoch): checks every field against this run, then copies its arrays into this run's
        buffers and takes its position. Refuses, in one line, a checkpoint of another model, data or
        settings, and one that was damaged or edited into something this run cannot continue."""
        path = directory / CHECKPOINT
        if not path.is_file():
            raise DataError(f"{path}: no checkpoint to resume from (graphc train --out {directory} "
                            "writes one)")
        arrays, meta = load_arrays(path)
        problem = self._mismatch(arrays, meta, samples, steps)
        if problem:
            raise DataError(f"{path}: {problem}")
        try:  # the generator checks the values' ranges
            self.rng.bit_generator.state = meta["rng"]
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{path}: its random generator state is malformed") from None
        for name, dst in self._arrays().items():
            np.copyto(dst, arrays[name])
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.order, self.losses = arrays.get("order"), arrays.get("losses")
        self.best = (meta["best"][0], meta["best"][1]) if meta["best"] else None

    def _arrays(self) -> dict[str, np.ndarray]:
        """The step's buffers (and the best params) by their names in a checkpoint."""
        return ({f"params/{k}": v for k, v in self.params.items()}
                | {f"state/{k}": v for k, v in self.state.items()}
                | {f"best/{k}": v for k, v in (self.best_params or {}).items()})

    def _mismatch(self, arrays: dict[str, np.ndarray], meta: dict, samples: int,
                  steps: int) -> str | None:
        """What makes a checkpoint's contents unfit to continue this run with, if anything."""
        if meta.get("format") != FORMAT:
            return "not a graphc checkpoint"
        if not _whole(meta.get("version")) or meta["version"] != VERSION:
            return f"checkpoint version {meta.get('version')!r}; this graphc reads version {VERSION}"
        saved = meta.get("config")
        if not isinstance(saved, dict):
            return "its run settings (config) are missing"
        # the processes first: a data-parallel run's graph differs from one process's
        keys = sorted([*self.config, *(k for k in saved if k not in self.config)], key=lambda k: k != "ranks")
        for key in keys:
            have, want = saved.get(key), self.config.get(key)
            if json.dumps(have, sort_keys=True) != json.dumps(want, sort_keys=True):  # 32.0 is not 32
                if key == "ranks":  # absent: one process
                    return (f"written by a run of {have or 1} processes, but this run has {want or 1}; "
                            f"resume with as many (mpirun -np {have or 1})")
                if key in FINGERPRINTS:
                    return (f"{FINGERPRINTS[key]} differs from the one this run was trained on; "
                            "resume with the same model and data")
                return (f"written with {key} {have}, but this run has {key} {want}; resume with "
                        "the same settings")
        epoch, step = meta.get("epoch"), meta.get("step")
        if not (_whole(epoch) and epoch >= 1 and _whole(step) and 0 <= step <= steps):
            return (f"position epoch {epoch!r}, step {step!r} is not one of this run's (epochs "
                    f"count from 1, steps from 0 to {steps})")
        best = meta.get("best", "missing")
        if best is not None and (self.best_params is None or not (
                isinstance(best, list) and len(best) == 2 and _whole(best[0]) and 1 <= best[0] < epoch
                and type(best[1]) is float and math.isfinite(best[1]))):
            return (f"best {best!r} is not [epoch, validation loss] of an epoch before {epoch}"
                    + ("" if self.best_params is not None else " (and this run has no validation split)"))
        want = {name: (a.dtype, a.shape) for name, a in self._arrays().items()}
        if step:  # mid-epoch: the epoch's order and its losses so far
            want |= {"order": (np.dtype(np.int64), (samples if self.draw is None else steps * self.draw,)),
                     "losses": (np.dtype(np.float64), (steps,))}
        odd = sorted(want.keys() ^ arrays.keys())
        if odd:
            return f"array {odd[0]} {'missing' if odd[0] in want else 'is not part of this run'}"
        for name, (dtype, shape) in want.items():
            got = arrays[name]
            if (got.dtype, got.shape) != (dtype, shape):
                return f"{name} is {got.dtype}{list(got.shape)}, this run's is {dtype}{list(shape)}"
            if name != "losses" and not np.isfinite(got).all():  # saves never write those
                return f"{name} holds NaN or Inf"
        if step and self.draw is None and not np.array_equal(np.sort(arrays["order"]), np.arange(samples)):
            return f"order is not a permutation of the {samples} training samples"
        if step and self.draw is not None and not ((arrays["order"] >= 0) & (arrays["order"] < samples)).all():
            return f"order picks samples outside the {samples} training samples"
        if step and (np.isinf(arrays["losses"]).any() or not np.isnan(arrays["losses"][step:]).all()):
            return f"losses do not fit step {step}: finite or NaN (skipped) before it, NaN from it"
        rng, fresh = meta.get("rng"), self.rng.bit_generator.state
        if not (_like(rng, fresh) and rng["has_uint32"] in (0, 1)):
            return "its random generator state is malformed"
        return None


def _whole(v: object) -> TypeGuard[int]:
    """An integer in JSON's sense and Python's: not 1.0, not true."""
    return type(v) is int


def _like(value: object, template: _T) -> TypeGuard[_T]:
    """Whether `value` has `template`'s structure: the same keys, leaves of the same types."""
    if isinstance(template, dict):
        return (isinstance(value, dict) and value.keys() == template.keys()
                and all(_like(value[k], template[k]) for k in template))
    return type(value) is type(template)


class Rollback:
    """Copies of a step's buffers taken before each batch, so that a bad batch can be undone
    (the native step updates its buffers in place). Allocated once; each take is a plain copy."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.live = arrays
        self.saved = {k: np.empty_like(v) for k, v in arrays.items()}

    def take(self) -> None:
        for k, v in self.live.items():
            np.copyto(self.saved[k], v)

    def undo(self) -> None:
        for k, v in self.saved.items():
            np.copyto(self.live[k], v)
