"""A compiled step: the buffers it reads and writes, and one native call that runs it.

The runtime owns every buffer as a NumPy array (inputs, params, optimizer state, outputs, one
arena for intermediates) and hands their addresses to the native entry point in a pointer table
built once. Params and a model's state can be shared between steps (training and evaluation read
the same arrays).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from graphc.codegen.feed import build_feed
from graphc.codegen.jit import Native, compile_host
from graphc.codegen.module import scratch_bytes, table_slots
from graphc.codegen.target import Target
from graphc.ir.graph import NP_DTYPES, Param, Value
from graphc.passes.pipeline import Schedule
from graphc.runtime.init import init_params
from graphc.runtime.pool import Pool

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))
_RUN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


class _Gather(ctypes.Structure):
    """feed.GATHER: what the gather task copies."""
    _fields_ = [("dst", ctypes.c_void_p), ("src", ctypes.c_void_p), ("idx", ctypes.c_void_p),
                ("rows", ctypes.c_int64), ("row_bytes", ctypes.c_int64)]


# a smaller batch gains nothing from a second thread: np.take copies it (its call costs less)
SPLIT_GATHER_BYTES = 1 << 16


@functools.cache
def _gather_task() -> tuple[Native, int]:
    """The compiled batch gather (codegen/feed.py) and its task's address."""
    native = compile_host("feed", build_feed)
    return native, native.address("graphc_gather_task")


class BoundsError(RuntimeError):
    """A bounds-checked step caught a kernel indexing outside its buffers: a compiler bug."""


def aligned(shape: tuple[int, ...], dtype: type, align: int = 64) -> np.ndarray:
    """A zeroed array whose data starts on an `align`-byte boundary (packed loads want it)."""
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


def _array(v: Value) -> np.ndarray:
    return aligned(tuple(v.shape), NP_DTYPES[v.dtype])


def _initial(p: Param) -> np.ndarray:
    a = _array(p.value)
    a[...] = init_params([p], 0)[p.value.name]  # state initializers draw nothing: the seed is moot
    return a


class Step:
    def __init__(self, sched: Schedule, native: Native, entry: str, target: Target,
                 params: dict[str, np.ndarray] | None = None, pool: Pool | None = None,
                 profile: bool = False, check_bounds: bool = False) -> None:
        g = sched.graph
        self.schedule = sched
        self.native = native  # keeps the code alive
        self.inputs = {i.value.name: _array(i.value) for i in g.inputs}
        self.params = params if params is not None else {p.value.name: _array(p.value) for p in g.params}
        # state found in `params` is shared too (a model's running statistics, which evaluation
        # reads); the rest (optimizer moments) starts here at its initializer
        self.state = {s.value.name: self.params[s.value.name] if s.value.name in self.params
                      else _initial(s) for s in g.state}
        for kind, leaves, arrays in (("param", g.params, self.params),
                                     ("state", g.state, self.state)):
            for p in leaves:
                a = arrays[p.value.name]
                if a.shape != tuple(p.value.shape) or a.dtype != NP_DTYPES[p.value.dtype]:
                    raise ValueError(f"{kind} {p.value.name}: expected {p.value.type}, "
                                     f"got {a.dtype}{list(a.shape)}")
        buffers = []
        for buf in sched.plan.buffers:
            if buf.kind == "output":
                v = g.outputs[buf.name]
                arr = _array(v)
                if v.const is not None:  # a constant output (e.g. a zero gradient) never changes
                    arr[...] = v.const
            elif buf.kind == "arena":
                arr = aligned((max(sched.plan.arena_bytes, 1),), np.uint8)
            else:
                arr = {"input": self.inputs, "param": self.params, "state": self.state}[buf.kind][buf.name]
            buffers.append(arr)
        # an output that is itself a leaf or an update is read from that leaf's array
        self.outputs = {k: buffers[sched.plan.place[v][0]] for k, v in g.outputs.items()}
        self._buffers = buffers  # keeps the arena and output arrays alive for the table
        self.pool = pool
        threads = pool.threads if pool else 1
        self._scratch = aligned((max(scratch_bytes(sched, target, threads), 1),), np.uint8)
        # a profiling build adds each kernel's cycles to this array (one entry per scheduled kernel)
        self.cycles = np.zeros(len(sched.kernels), np.int64) if profile else None
        # a bounds-checked build writes the index + 1 of a kernel that tried an out-of-range access
        self.fault = np.zeros(1, np.int64) if check_bounds else None
        extra = {"scratch": self._scratch.ctypes.data,
                 "pool_run": pool and pool.run_address, "pool": pool and pool.state_address,
                 "cycles": profile and self.cycles.ctypes.data, "fault": check_bounds and self.fault.ctypes.data}
        slots = [a.ctypes.data for a in buffers] + [extra[n] for n in table_slots(threads, profile, check_bounds)]
        self._table = (ctypes.c_void_p * len(slots))(*slots)
        self._fn = _ENTRY(native.address(entry))
        self._run = pool and _RUN(pool.run_address)

    def run(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        """Copy `feeds` into the input buffers, run the step once, return the outputs (views)."""
        for name, x in feeds.items():
            np.copyto(self.inputs[name], x, casting="same_kind")
        self._fn(self._table)
        if self.fault is not None and self.fault[0]:
            k = self.schedule.kernels[int(self.fault[0]) - 1]
            raise BoundsError(f"bounds check failed: kernel {int(self.fault[0]) - 1} ({k.name}, "
                              f"{' '.join(n.op for n in k.nodes)}) indexed outside a buffer")
        return self.outputs

    def gather(self, name: str, rows: np.ndarray, idx: np.ndarray) -> None:
        """inputs[name][i] = rows[idx[i]]: a batch picked from a dataset, copied by generated code
        on the step's threads where it is large (codegen/feed.py says why and by how much), else by
        np.take. `rows` must be C-contiguous, with the input's dtype and row shape."""
        dst = self.inputs[name]
        if rows.dtype != dst.dtype or rows.shape[1:] != dst.shape[1:] or not rows.flags.c_contiguous:
            raise ValueError(f"input {name}: rows must be C-contiguous {dst.dtype}[n, "
                             f"{', '.join(map(str, dst.shape[1:]))}], got {rows.dtype}{list(rows.shape)}")
        if not self._run or dst.nbytes < SPLIT_GATHER_BYTES:
            np.take(rows, idx, axis=0, out=dst)
            return
        idx = np.ascontiguousarray(idx, np.int64)
        # one reduction checks both ends: a negative index is a huge unsigned one
        if idx.shape != dst.shape[:1] or idx.view(np.uint64).max() >= len(rows):
            raise IndexError(f"input {name}: need {len(dst)} row indices in [0, {len(rows)}), "
                             f"got {idx.shape[0] if idx.ndim else 'a scalar'} in "
                             f"[{idx.min()}, {idx.max()}]")
        args = _Gather(dst.ctypes.data, rows.ctypes.data, idx.ctypes.data, len(idx), dst[0].nbytes)
        self._run(self.pool.state_address, _gather_task()[1], ctypes.addressof(args), self.pool.threads)

    def __call__(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        return self.run(**feeds)
