"""The process's worker threads: the native pool is compiled once and threads park inside it.

Each worker is a Python thread that calls into generated code through ctypes (which releases the
GIL) and stays there, spinning briefly and then sleeping on a futex until a step posts work. The
pool's state is a small buffer this object owns; a step's table carries its address.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import threading


from graphc.codegen.jit import compile_host
from graphc.codegen.pool import build_pool, state_bytes
from graphc.codegen.target import host_target
from graphc.errors import GraphcError


class Pool:
    def __init__(self, threads: int) -> None:
        target = host_target()
        self.native = compile_host("pool", build_pool)
        self.threads = threads
        addr = self.native.address
        self.run_address = addr("graphc_pool_run")
        self._state = (ctypes.c_int64 * -(-state_bytes(target) // 8))()  # zeroed, 8-byte aligned
        self.state_address = ctypes.addressof(self._state)
        ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr("graphc_pool_init"))(
            self.state_address, threads - 1)
        worker = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(addr("graphc_pool_worker"))
        self._stop = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(addr("graphc_pool_stop"))
        self._threads = [threading.Thread(target=worker, args=(self.state_address, t), daemon=True,
                                          name=f"graphc-{t}") for t in range(1, threads)]
        for t in self._threads:
            t.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        self._stop(self.state_address)
        for t in self._threads:
            t.join(timeout=1)


MAX_THREADS = 8  # the most threads a step is split across


def default_threads() -> int:
    """$GRAPHC_THREADS, else the machine's cores."""
    text = os.environ.get("GRAPHC_THREADS", "").strip()
    if not text:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise GraphcError(f"GRAPHC_THREADS={text!r}: expected a whole number of threads, at least 1")
    return int(text)


def thread_count(threads: int | None = None) -> int:
    """The threads a step is split across: `threads`, else the default, at most MAX_THREADS."""
    return max(1, min(threads or default_threads(), MAX_THREADS))


@functools.cache
def pool(threads: int) -> Pool:
    """The one pool with `threads` threads (the caller's thread counts as one)."""
    return Pool(threads)
