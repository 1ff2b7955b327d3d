"""The on-disk object cache: native objects by content key, trusted only when they are the user's own.

An entry is loaded and run in this process, so nobody but the current user may have been able to
write it: the directory is created 0700 whatever the umask; a directory or entry owned by someone
else or writable by group or others is refused; entries are regular files of bounded size, opened
without following links; each holds its key and a checksum, so an entry that is corrupted or holds
another key's object is rebuilt, never run. The cache is an optimization: when it is refused or
unusable, graphc warns once per directory and compiles without it. Its size is bounded by
$GRAPHC_CACHE_MAX_BYTES: after each write the least recently used entries are evicted.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import Callable, Iterator

from graphc.errors import GraphcError

_MAGIC = b"graphc-obj2\n"
_DIGEST = 32                        # sha256 of the header (magic + key) and the object
_MAX_ENTRY = 1 << 28                # far beyond any object graphc emits; bounds what one read costs
_DEFAULT_MAX_BYTES = 256 << 20
_ENTRY = r"[0-9a-f]{64}\.o"
_TEMP = r"[0-9a-f]{64}\.o\.[0-9a-f]+\.tmp"  # a write in progress, or one killed midway
_warned: set[str] = set()          # directories already warned about


class Refused(GraphcError):
    """The object cache, or an entry in it, cannot be used or trusted."""

    def __init__(self, directory: Path | str, why: str) -> None:
        super().__init__(f"object cache {directory}: {why}")
        self.directory = str(directory)


def cache_dir() -> Path:
    """$GRAPHC_CACHE_DIR, else ~/.cache/graphc."""
    if env := os.environ.get("GRAPHC_CACHE_DIR"):
        return Path(env)
    try:
        return Path.home() / ".cache" / "graphc"
    except RuntimeError:  # no $HOME and no passwd entry
        raise Refused("~/.cache/graphc", "no home directory (set GRAPHC_CACHE_DIR)") from None


def max_bytes() -> int:
    """The cache's size limit: $GRAPHC_CACHE_MAX_BYTES, else 256 MiB."""
    text = os.environ.get("GRAPHC_CACHE_MAX_BYTES") or str(_DEFAULT_MAX_BYTES)
    if not text.isdigit():
        raise GraphcError(f"GRAPHC_CACHE_MAX_BYTES={text}: expected a whole number of bytes")
    return int(text)


def load(key: str) -> bytes | None:
    """The object cached for `key`, or None: missing, or refused (with a warning)."""
    with _or_warn(), _directory(create=False) as (directory, dfd):
        return _read(directory, dfd, key) if dfd is not None else None
    return None


def store(key: str, obj: bytes) -> None:
    """Cache `obj` for `key`, then evict the least recently used entries beyond the size limit."""
    limit = max_bytes()
    with _or_warn(), _directory(create=True) as (_, dfd):
        assert dfd is not None  # made if missing
        _write(dfd, key, obj)
        total = 0
        for _, size, name in sorted(_entries(dfd, _ENTRY), reverse=True):  # newest first
            total += size
            if total > limit:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)


def usage() -> tuple[Path, int, int]:
    """The cache directory, its number of entries and their bytes."""
    with _directory(create=False) as (directory, dfd):
        sizes = [size for _, size, _ in _entries(dfd, _ENTRY)] if dfd is not None else []
        return directory, len(sizes), sum(sizes)


def clear() -> tuple[Path, int, int]:
    """Remove graphc's entries (and leftover temporaries; nothing else): (directory, count, bytes)."""
    with _directory(create=False) as (directory, dfd):
        gone = _entries(dfd, _ENTRY) + _entries(dfd, _TEMP) if dfd is not None else []
        for _, _, name in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
        return directory, len(gone), sum(size for _, size, _ in gone)


@contextlib.contextmanager
def _or_warn() -> Iterator[None]:
    """Swallow Refused with a warning, once per directory: the cache is only an optimization."""
    try:
        yield
    except Refused as e:
        if e.directory not in _warned:
            _warned.add(e.directory)
            print(f"warning: {e.message}; compiling without it", file=sys.stderr)


@contextlib.contextmanager
def _directory(create: bool) -> Iterator[tuple[Path, int | None]]:
    """The cache directory and a descriptor of it, checked to be the current user's alone (None
    when it does not exist and `create` is false). Entries are opened relative to the descriptor,
    so the directory checked is the one used. An OSError inside becomes Refused."""
    directory = cache_dir()
    try:
        if create:
            _mkdirs(directory)
        elif not directory.exists():
            yield directory, None
            return
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _check(directory, "", os.fstat(dfd), stat.S_ISDIR, "a directory")
            yield directory, dfd
        finally:
            os.close(dfd)
    except OSError as e:
        raise Refused(directory, e.strerror or str(e)) from None


def _mkdirs(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask."""
    if path.is_dir() or path.parent == path:
        return
    _mkdirs(path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # made meanwhile by another graphc, or not a directory: checked next
        return
    os.chmod(path, 0o700)


def _check(directory: Path, name: str, st: os.stat_result, is_kind: Callable[[int], bool], kind: str) -> None:
    """Refuse a file (`name` in `directory`, or the directory itself) that is not of the expected
    kind or that someone other than the current user could have written."""
    if not is_kind(st.st_mode):
        why = f"not {kind}"
    elif st.st_uid != os.geteuid():
        why = f"owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        why = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return
    raise Refused(directory, f"{name}: {why}" if name else why)


def _read(directory: Path, dfd: int, key: str) -> bytes | None:
    name = f"{key}.o"
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Refused(directory, f"{name}: {'not a regular file' if e.errno == errno.ELOOP else e.strerror}") from None
    try:
        st = os.fstat(fd)
        _check(directory, name, st, stat.S_ISREG, "a regular file")
        if st.st_size > _MAX_ENTRY:
            raise Refused(directory, f"{name}: larger than {_MAX_ENTRY} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(st.st_size)  # grown since: cut short, so the checksum fails
        head = _MAGIC + key.encode()
        digest, body = data[len(head):len(head) + _DIGEST], data[len(head) + _DIGEST:]
        if not data.startswith(head) or hashlib.sha256(head + body).digest() != digest:
            raise Refused(directory, f"{name}: corrupted, or another key's object")
        with contextlib.suppress(OSError):  # a read-only cache still serves hits
            os.utime(fd)  # recently used: evicted last
    finally:
        os.close(fd)
    return body


def _write(dfd: int, key: str, obj: bytes) -> None:
    name = f"{key}.o"
    tmp = f"{name}.{secrets.token_hex(8)}.tmp"
    head = _MAGIC + key.encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head + hashlib.sha256(head + obj).digest() + obj)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _entries(dfd: int, pattern: str) -> list[tuple[int, int, str]]:
    """(mtime in ns, bytes, name) of the files in the directory whose names match `pattern`."""
    found = []
    with os.scandir(dfd) as it:
        for e in it:
            if re.fullmatch(pattern, e.name):
                with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another graphc
                    st = e.stat(follow_symlinks=False)
                    found.append((st.st_mtime_ns, st.st_size, e.name))
    return found
