"""A compiled step: the buffers it reads and writes, and one native call that runs it.

The runtime owns every buffer as a NumPy array (inputs, params, optimizer state, outputs, one
arena for intermediates) and hands their addresses to the native entry point in a pointer table
built once. Params and a model's state can be shared between steps (training and evaluation read
the same arrays).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import numpy as np

from graphc.codegen.feed import CONVERSIONS, build_feed
from graphc.codegen.jit import Native, compile_host
from graphc.codegen.module import scratch_bytes, table_slots
from graphc.codegen.target import Target
from graphc.errors import GraphcError
from graphc.ir.graph import DTYPES, NP_DTYPES, Param, Value
from graphc.passes.pipeline import Schedule
from graphc.ir.init import init_params
from graphc.runtime.execute.pool import Pool

_ENTRY = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p))
_RUN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
_TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
# module.EXTERN_FN: fn(user, data, element count, dtype's index in DTYPES)
EXTERN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32)


class _Extern(ctypes.Structure):
    """What an extern slot points to: the function and the pointer it is given first."""
    _fields_ = [("fn", ctypes.c_void_p), ("user", ctypes.c_void_p)]


class _Source(ctypes.Structure):
    """feed.SOURCE: one input a feed fills."""
    _fields_ = [("dst", ctypes.c_void_p), ("src", ctypes.c_void_p), ("src_rows", ctypes.c_int64),
                ("row_bytes", ctypes.c_int64), ("divisor", ctypes.c_float), ("conversion", ctypes.c_int32)]


class _Feed(ctypes.Structure):
    """feed.FEED: a batch's row indices and the sources they pick from."""
    _fields_ = [("idx", ctypes.c_void_p), ("rows", ctypes.c_int64), ("sources", ctypes.c_void_p),
                ("count", ctypes.c_int64), ("fault", ctypes.c_void_p)]


# a smaller batch gains nothing from a second thread: this thread copies it (no hand-off)
SPLIT_FEED_BYTES = 1 << 16


@functools.cache
def _feed_task() -> tuple[Native, int]:
    """The compiled batch feed (codegen/feed.py) and its task's address."""
    native = compile_host("feed", build_feed)
    return native, native.address("graphc_feed_task")


class BoundsError(RuntimeError):
    """A bounds-checked step caught a kernel indexing outside its buffers: a compiler bug."""


class IndexFault(GraphcError, IndexError):
    """A step met an index from data outside the rows it picks (a gather's, a scatter's)."""


def aligned(shape: tuple[int, ...], dtype: type, align: int = 64) -> np.ndarray:
    """A zeroed array whose data starts on an `align`-byte boundary (packed loads want it)."""
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.zeros(n + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + n].view(dtype).reshape(shape)


def _array(v: Value) -> np.ndarray:
    return aligned(v.dims, NP_DTYPES[v.dtype])


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
            if buf.role == "output":
                v = g.outputs[buf.name]
                arr = _array(v)
                if v.const is not None:  # a constant output (e.g. a zero gradient) never changes
                    arr[...] = v.const
            elif buf.role == "arena":
                arr = aligned((max(sched.plan.arena_bytes, 1),), np.uint8)
            else:
                arr = {"input": self.inputs, "param": self.params, "state": self.state}[buf.role][buf.name]
            buffers.append(arr)
        # an output that is itself a leaf or an update is read from that leaf's array
        self.outputs = {k: buffers[sched.plan.place[v][0]] for k, v in g.outputs.items()}
        self._buffers = buffers  # keeps the arena and output arrays alive for the table
        self.pool = pool
        threads = pool.threads if pool else 1
        self._scratch = aligned((max(scratch_bytes(sched, target, threads), 1),), np.uint8)
        # a profiling build adds each kernel's cycles to this array (one entry per scheduled kernel)
        self.cycles = np.zeros(len(sched.every_kernel()), np.int64) if profile else None
        names = table_slots(sched, threads, profile, check_bounds)
        # the first bad index a kernel met: kernel + 1, site, index, bound (codegen.kernels.Fault)
        self.fault = np.zeros(4, np.int64) if "fault" in names else None
        extra = {"scratch": self._scratch.ctypes.data,
                 "pool_run": pool.run_address if pool else None, "pool": pool.state_address if pool else None,
                 "cycles": self.cycles is not None and self.cycles.ctypes.data,
                 "fault": self.fault is not None and self.fault.ctypes.data}
        # extern_call slot -> the {fn, user} its table slot points to; the functions bound (kept alive here)
        self._externs = {n.removeprefix("extern:"): _Extern() for n in names if n.startswith("extern:")}
        extra |= {f"extern:{k}": ctypes.addressof(pair) for k, pair in self._externs.items()}
        slots = [a.ctypes.data for a in buffers] + [extra.get(n) for n in names]
        self._table = (ctypes.c_void_p * len(slots))(*slots)
        self._bound: dict[str, object] = {}
        self._callback_error: BaseException | None = None
        self._fn = _ENTRY(native.address(entry))
        self._run = pool and _RUN(pool.run_address)

    def run(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        """Copy `feeds` into the input buffers, run the step once, return the outputs (views)."""
        for name, x in feeds.items():
            np.copyto(self.inputs[name], x, casting="same_kind")
        unbound = [slot for slot in self._externs if slot not in self._bound]
        if unbound:
            raise RuntimeError(f"extern_call slot {unbound[0]} has no function: step.bind_extern"
                               f"({unbound[0]!r}, fn) first")
        self._fn(self._table)
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error
        if self.fault is not None and self.fault[0]:
            kernel, site, index, bound = (int(x) for x in self.fault)
            self.fault[:] = 0
            k = self.schedule.every_kernel()[kernel - 1]
            if site:
                n = k.nodes[site - 1]
                raise IndexFault(f"{n.op}: index {index} out of range [0, {bound})", n.loc)
            raise BoundsError(f"bounds check failed: kernel {kernel - 1} ({k.name}, "
                              f"{' '.join(n.op for n in k.nodes)}) indexed outside a buffer "
                              f"(element {index} of {bound})")
        return self.outputs

    @property
    def extern_slots(self) -> tuple[str, ...]:
        """The slots of the step's extern_call nodes, each to be bound before it runs."""
        return tuple(self._externs)

    def bind_extern(self, slot: str, fn: Callable[[np.ndarray], None] | int, user: int = 0) -> None:
        """Bind the function `extern_call(x, slot=...)` calls during the step: the address of a C
        function void(void *user, void *data, int64_t count, int32_t dtype) (dtype: 0, 1, 2 for
        f32, f64, i32; the caller keeps it and `user` alive), or a Python callable given the values
        as a flat NumPy array to update in place (an exception it raises is raised by `run`)."""
        if slot not in self._externs:
            raise KeyError(f"no extern_call slot {slot} (slots: {', '.join(self._externs) or 'none'})")
        if callable(fn):
            wrapped = EXTERN(functools.partial(self._callback, fn))
            self._bound[slot], address = wrapped, ctypes.cast(wrapped, ctypes.c_void_p).value
        else:
            self._bound[slot], address = fn, fn
        self._externs[slot].fn, self._externs[slot].user = address, user

    def _callback(self, fn: Callable[[np.ndarray], None], user: int, data: int, count: int, dtype: int) -> None:
        dt = np.dtype(NP_DTYPES[DTYPES[dtype]])
        try:
            fn(np.ctypeslib.as_array((ctypes.c_byte * (count * dt.itemsize)).from_address(data)).view(dt))
        except BaseException as e:  # ctypes would print it and carry on
            self._callback_error = e

    def feeder(self, **sources: np.ndarray | tuple[np.ndarray, float]) -> Feeder:
        """A Feeder that fills each named input with the rows a batch's indices pick from its source."""
        return Feeder(self, sources)

    def __call__(self, **feeds: np.ndarray | float) -> dict[str, np.ndarray]:
        return self.run(**feeds)


class Feeder:
    """Fills a step's inputs with a batch of dataset rows: feeder(idx) sets inputs[name][i] =
    rows[idx[i]] for every source, in one native call on the step's threads (codegen/feed.py).

    A source is rows of the input's dtype, copied as they are, or (bytes, divisor): uint8 rows for
    a float input, which receives float32(byte) / divisor. Rows are C-contiguous with the input's
    row shape; the feeder holds on to them and reads their current values at each call.
    """

    def __init__(self, step: Step, sources: dict[str, np.ndarray | tuple[np.ndarray, float]]) -> None:
        specs, rows_kept, dsts = [], [], []  # kept: the native sources point into them
        for name, source in sources.items():
            rows, divisor = source if isinstance(source, tuple) else (source, 1.0)
            if name not in step.inputs:
                raise ValueError(f"no input {name} to feed (inputs: {', '.join(step.inputs)})")
            dst = step.inputs[name]
            conversion = f"u8_f{8 * dst.itemsize}" if rows.dtype == np.uint8 and dst.dtype.kind == "f" else "copy"
            if (conversion not in CONVERSIONS or conversion == "copy" and (rows.dtype != dst.dtype or divisor != 1)
                    or rows.shape[1:] != dst.shape[1:] or not rows.flags.c_contiguous):
                raise ValueError(f"input {name}: rows must be C-contiguous {dst.dtype}, or uint8 with a "
                                 f"divisor, shaped [n, {', '.join(map(str, dst.shape[1:]))}]; got "
                                 f"{rows.dtype}{list(rows.shape)}, divisor {divisor}")
            rows_kept.append(rows)
            dsts.append(dst)
            specs.append(_Source(dst.ctypes.data, rows.ctypes.data, len(rows), rows[:1].nbytes,
                                 divisor, list(CONVERSIONS).index(conversion)))
        self._keep = rows_kept + dsts
        batches = {len(dst) for dst in dsts}
        if len(batches) != 1:
            raise ValueError(f"a feeder needs inputs of one batch size, got {sorted(batches)}")
        (self.batch,) = batches
        self._sources = (_Source * len(specs))(*specs)
        self._fault = np.zeros(1, np.int64)
        self._args = _Feed(None, self.batch, ctypes.addressof(self._sources), len(specs),
                           self._fault.ctypes.data)
        task, arg = _feed_task()[1], ctypes.addressof(self._args)
        if step.pool and step._run and sum(dst.nbytes for dst in dsts) >= SPLIT_FEED_BYTES:
            self._go = functools.partial(step._run, step.pool.state_address, task, arg, step.pool.threads)
        else:
            self._go = functools.partial(_TASK(task), arg, 0, 1)

    def __call__(self, idx: np.ndarray) -> None:
        idx = np.ascontiguousarray(idx, np.int64)
        if idx.shape != (self.batch,):
            raise IndexError(f"a batch takes {self.batch} row indices, got shape {list(idx.shape)}")
        self._args.idx = idx.ctypes.data
        self._go()
        if self._fault[0]:
            self._fault[0] = 0
            raise IndexError(f"row indices out of range: {idx.min()} to {idx.max()} "
                             f"(sources hold {', '.join(str(s.src_rows) for s in self._sources)} rows)")
