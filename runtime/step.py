"""A compiled step: the buffers it reads and writes, and one native call that runs it.

The runtime owns every buffer as a NumPy array (inputs, params, optimizer state, outputs, one
arena for intermediates) and hands their addresses to the native entry point in a pointer table
built once. Params can be shared between steps (training and evaluation read the same arrays).
"""

from __future__ import annotations

import ctypes

import numpy as np

from graphc.codegen.jit import Native
from graphc.ir.graph import NP_DTYPES, Value
from graphc.passes.pipeline import Schedule
from graphc.runtime.pool import Pool

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))


def aligned(shape: tuple[int, ...], dtype: type, align: int = 64) -> np.ndarray:
    """A zeroed array whose data starts on an `align`-byte boundary (packed loads want it)."""
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


def _array(v: Value) -> np.ndarray:
    return aligned(tuple(v.shape), NP_DTYPES[v.dtype])


class Step:
    def __init__(self, sched: Schedule, native: Native, entry: str,
                 params: dict[str, np.ndarray] | None = None, pool: Pool | None = None,
                 profile: bool = False) -> None:
        g = sched.graph
        self.schedule = sched
        self.native = native  # keeps the code alive
        self.inputs = {i.value.name: _array(i.value) for i in g.inputs}
        self.params = params if params is not None else {p.value.name: _array(p.value) for p in g.params}
        for p in g.params:
            a = self.params[p.value.name]
            if a.shape != tuple(p.value.shape) or a.dtype != NP_DTYPES[p.value.dtype]:
                raise ValueError(f"param {p.value.name}: expected {p.value.type}, got {a.dtype}{list(a.shape)}")
        self.state = {s.value.name: _array(s.value) for s in g.state}
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
        self.pool = pool  # its run function follows the buffers in the table
        # a profiling build adds each kernel's cycles to this array (one entry per scheduled kernel)
        self.cycles = np.zeros(len(sched.kernels), np.int64) if profile else None
        slots = ([a.ctypes.data for a in buffers] + ([pool.run_address] if pool else [])
                 + ([self.cycles.ctypes.data] if profile else []))
        self._table = (ctypes.c_void_p * len(slots))(*slots)
        self._fn = _ENTRY(native.address(entry))

    def run(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        """Copy `feeds` into the input buffers, run the step once, return the outputs (views)."""
        for name, x in feeds.items():
            np.copyto(self.inputs[name], x, casting="same_kind")
        self._fn(self._table)
        return self.outputs

    def __call__(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        return self.run(**feeds)
