"""Saving and restoring training state: atomic, pickle-free files of named arrays with JSON
metadata, the state of a whole run (RunState: params, optimizer state, RNG, position, data order)
and the in-memory copy that undoes a bad batch (Rollback).

The file is an ordinary .npz archive, readable by np.load(path, allow_pickle=False): one .npy
member per array (names may contain dots, e.g. "fc1.weight") plus "__meta__", the metadata as
UTF-8 JSON in a uint8 array. Saving writes a temporary file in the target's directory, fsyncs it,
renames it over the target and fsyncs the directory, so a crash leaves either the old file or the
new one, never a torn mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphc.errors import DataError
from graphc.ir.graph import NP_DTYPES, Param
from graphc.runtime.data import check_finite

META_KEY = "__meta__"


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
    try:
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.ndarray):
            raise DataError(f"{path}: holds a single .npy array, not a checkpoint archive")
        with npz:
            arrays = {name: npz[name] for name in npz.files}
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


def load_params(path: str | os.PathLike, params: list[Param]) -> dict[str, np.ndarray]:
    """The arrays a model's `params` need, read from a file written by save_arrays (graphc train
    --out); each must be present with the param's shape, hold floats (converted to the param's
    dtype: float64 to float32 is fine where the values fit) and be finite."""
    arrays, _ = load_arrays(path)
    out = {}
    for p in params:
        name, arr = p.value.name, arrays.get(p.value.name)
        if arr is None or arr.shape != tuple(p.value.shape) or arr.dtype.kind != "f":
            got = ("missing" if arr is None else f"has shape {list(arr.shape)}"
                   if arr.shape != tuple(p.value.shape) else f"has dtype {arr.dtype} (not floats)")
            raise DataError(f"{path}: param {name} {got}, model wants {p.value.type}")
        with np.errstate(over="ignore"):  # check_finite names a value that overflows
            out[name] = np.ascontiguousarray(arr, dtype=NP_DTYPES[p.value.dtype])
        check_finite(path, arr, out[name], lambda i, name=name: f"param {name}{list(i) if i else ''}")
    return out


# ---- the state of a training run ----

CHECKPOINT = "checkpoint.npz"


@dataclass
class RunState:
    """Everything a training run needs to continue exactly where it was.

    `params` (the model's arrays) and `state` (the step's other state: optimizer moments, the step
    counter) are the compiled step's own buffers, saved from and restored into in place. `rng` draws
    each epoch's sample order; `config` holds the settings a resumed run must share with the first.
    """

    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    rng: np.random.Generator
    config: dict
    epoch: int = 1                    # the epoch in progress (1-based)
    step: int = 0                     # steps done in it
    order: np.ndarray | None = None   # its sample order, drawn when it starts
    losses: np.ndarray | None = None  # its losses so far; NaN marks a skipped batch

    def start_epoch(self, samples: int, steps: int) -> None:
        """Draw this epoch's order, unless a resumed run is already in the middle of it."""
        if self.order is None:
            self.order = self.rng.permutation(samples)
            self.losses = np.full(steps, np.nan)

    def end_epoch(self) -> None:
        self.epoch, self.step, self.order, self.losses = self.epoch + 1, 0, None, None

    def save(self, directory: Path) -> Path:
        """Atomically writes the checkpoint into `directory`; returns its path."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"params/{k}": v for k, v in self.params.items()}
        arrays |= {f"state/{k}": v for k, v in self.state.items()}
        if self.order is not None:
            arrays |= {"order": self.order, "losses": self.losses}
        meta = {"format": "graphc-checkpoint", "version": 1, "epoch": self.epoch, "step": self.step,
                "rng": self.rng.bit_generator.state, "config": self.config}
        save_arrays(directory / CHECKPOINT, arrays, meta)
        return directory / CHECKPOINT

    def restore(self, directory: Path) -> None:
        """Continues from the checkpoint in `directory`: copies its arrays into this run's buffers
        and takes its position; refuses one made by another model or other settings."""
        path = directory / CHECKPOINT
        if not path.exists():
            raise DataError(f"{path}: no checkpoint to resume from (graphc train --out {directory} "
                            "writes one)")
        arrays, meta = load_arrays(path)
        saved = meta.get("config")
        if meta.get("format") != "graphc-checkpoint" or not isinstance(saved, dict):
            raise DataError(f"{path}: not a graphc checkpoint")
        for key, want in self.config.items():
            if saved.get(key) != want:
                raise DataError(f"{path}: written with {key} {saved.get(key)}, but this run has "
                                f"{key} {want}; resume with the same settings")
        for kind, live in (("params", self.params), ("state", self.state)):
            for name, dst in live.items():
                src = arrays.get(f"{kind}/{name}")
                if src is None or src.shape != dst.shape or src.dtype != dst.dtype:
                    got = "missing" if src is None else f"{src.dtype}{list(src.shape)}"
                    raise DataError(f"{path}: {kind} {name} is {got}, the run has "
                                    f"{dst.dtype}{list(dst.shape)}")
                np.copyto(dst, src)
        try:
            self.rng.bit_generator.state = meta["rng"]
            self.epoch, self.step = int(meta["epoch"]), int(meta["step"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: corrupt checkpoint metadata ({e})") from None
        self.order, self.losses = arrays.get("order"), arrays.get("losses")


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
