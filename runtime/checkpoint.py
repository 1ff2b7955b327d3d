"""Atomic, pickle-free saving of named arrays (parameters, optimizer state) with JSON metadata.

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
from pathlib import Path

import numpy as np

from graphc.errors import DataError

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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: corrupt checkpoint metadata ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: checkpoint metadata is a {type(meta).__name__}, not an object")
    return arrays, meta
