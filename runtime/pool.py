"""The process's worker threads: the native pool is compiled once and threads park inside it.

Each worker is a Python thread that calls into generated code through ctypes (which releases the
GIL) and stays there, spinning briefly and then sleeping on a futex until a step posts work.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import os
import threading


from graphc.codegen.jit import compile_cached, source_hash
from graphc.codegen.pool import build_pool
from graphc.codegen.target import host_target


class Pool:
    def __init__(self, threads: int) -> None:
        target = host_target()
        key = hashlib.sha256(f"{source_hash()}|{target.key()}|pool".encode()).hexdigest()
        self.native, _ = compile_cached(key, lambda: build_pool(target), target)
        self.threads = threads
        addr = self.native.address
        self.run_address = addr("graphc_pool_run")
        ctypes.CFUNCTYPE(None, ctypes.c_int64)(addr("graphc_pool_init"))(threads - 1)
        worker = ctypes.CFUNCTYPE(None, ctypes.c_int64)(addr("graphc_pool_worker"))
        self._stop = ctypes.CFUNCTYPE(None)(addr("graphc_pool_stop"))
        self._threads = [threading.Thread(target=worker, args=(t,), daemon=True, name=f"graphc-{t}")
                         for t in range(1, threads)]
        for t in self._threads:
            t.start()
        atexit.register(self.stop)

    def stop(self) -> None:
        self._stop()
        for t in self._threads:
            t.join(timeout=1)


def default_threads() -> int:
    return int(os.environ.get("GRAPHC_THREADS") or os.cpu_count() or 1)


@functools.cache
def pool(threads: int) -> Pool:
    """The one pool with `threads` threads (the caller's thread counts as one)."""
    return Pool(threads)
