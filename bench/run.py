"""Training benchmark: graphc against hand-written NumPy, PyTorch (eager and torch.compile) and JAX.

Run from the repository root:

    python bench/run.py               # full MNIST epochs, 5 repetitions (a few minutes)
    python bench/run.py --reps 9      # more repetitions: medians steadier on a noisy machine
    python bench/run.py --threads 1   # every framework on one thread
    python bench/run.py --smoke       # 256 samples, 1 repetition: what the tests run
    python bench/run.py --nets lenet  # only some networks (names as in NETWORKS)

For each network (mlp.net at batch 128, twolayer.net at batch 100, mlp.net at batch 8 for latency,
lenet.net at batch 64, and issue #21's wide networks: bench/nets/mlp_wide.net, 784-2048-2048-10 at
batch 256, and bench/nets/cnn_wide.net, 3x3 convolutions of 64 and 128 channels, at batch 128) every
framework trains the same layers (read from the .net file by bench/netspec.py) from the same initial
weights (graphc's initializers), with SGD momentum 0.9 at the model's learning rate (scaled by
batch / the model's batch: batch 8 at lr 0.1 diverges, and the denormal floats that follow slow most
frameworks ~100x), held constant (a train block's weight decay, schedule and clipping are left out),
in float32, on the same shuffled batches.
Frameworks alternate epoch by epoch within one process, so the machine's load changes hit all of
them alike; the table shows the median epoch. The NumPy baseline is an MLP: conv nets skip it.
The wide networks (Network.timed_steps) time only the first steps of each epoch's shuffled order and
scale that time to the whole epoch (the output says so): a full run takes ~9 minutes on a 2-core
machine (whole epochs: ~35).

Training FLOPs per step at batch B, over the layers' forward multiply-adds per sample m_i
(in·out for a dense layer, out·H·W·in·k·k for a conv layer):
    2·B·Σ m_i (forward) + 2·B·Σ m_i (weight gradients) + 2·B·Σ_{i>1} m_i (input gradients)
  = 6·B·Σ m_i − 2·B·m_1  (no framework computes the gradient of the data; pooling and elementwise
work are not counted). % of peak is against the FP32 FMA peak measured here with a generated kernel
on all threads used.

Memory bandwidth: a generated triad a = b + s·c (the `triad` kernel below, explicit vectors,
ordinary stores) over three arrays together at least twice the last-level cache, split between the
threads; best of a few runs; GB/s counts the bytes read and written (12 per element; an ordinary
store also reads its line first, which is not counted: graphc's loop kernels pay the same). For
reference the same triad is also timed over 3 x 4 MiB, beyond L2 but within a large last-level
cache, where most of a step's arrays stay between kernels.

Per kernel (graphc only): the profiling build of the step benchmarked (runtime/train/profile.py's
profile_step: each kernel's share of the counted cycles times the wall time of the same steps). A
contraction (GEMM) counts 2·M·N·K FLOPs against the FMA peak on the threads used, summed by GEMM
class (which of M, N, K are below 256; "M,N,K >= 256" is issue #21's large GEMMs); a loop kernel
(elementwise or reduce: optimizer updates, masks, reductions) counts the bytes of its inputs and
outputs, each once, against the measured bandwidth (a kernel whose data stayed in cache can exceed
it).

Peak memory: one process's peak RSS cannot be split between frameworks, so each framework is
measured in a fresh process that loads the data, then builds the framework and trains the first
network benchmarked a few steps; on Linux the peak is reset after loading the data, so the figure is
the framework's own.
"""

from __future__ import annotations

import os
import sys

# OpenBLAS reads these when NumPy loads it. Some environments set OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE for old OpenBLAS builds; with the current one they select a slower kernel.
UNSET_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}


def _threads_from_argv() -> int | None:
    """--threads, read before NumPy and PyTorch load: their BLAS/OpenMP pools size themselves then."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return None


if (_n := _threads_from_argv()) is not None:
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_n)
    if _n == 1:  # XLA's CPU client has no thread-count setting, only "one thread or all"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()

import argparse  # noqa: E402
import concurrent.futures  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Protocol  # noqa: E402

import llvmlite.binding as llvm  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from netspec import NetSpec, read_spec  # noqa: E402  (bench/ is on sys.path as the script's folder)
from numpy_baseline import NumpyMLP  # noqa: E402
from graphc.codegen.target import Target, host_target  # noqa: E402
from graphc.autodiff.graphs import training_graph  # noqa: E402
from graphc.driver import compile_graph, forward, load, train_graph  # noqa: E402
from graphc.runtime.train.data import load_dataset  # noqa: E402
from graphc.ir.init import init_params  # noqa: E402
from graphc.runtime.train.feeds import bind, rows  # noqa: E402
from graphc.runtime.train.profile import KernelTime, profile_step  # noqa: E402
from graphc.ops.lowering import Contraction  # noqa: E402
from graphc.ops.registry import lowered  # noqa: E402
from graphc.passes.fuse import LOOPS, KernelKind  # noqa: E402
from graphc.passes.pipeline import schedule  # noqa: E402

MOMENTUM = 0.9
SEED = 0
WARMUP_STEPS = 3      # first calls JIT-compile (JAX, torch.compile) and fault pages in
SMOKE_SAMPLES = 256
MEMORY_STEPS = 20     # peak RSS is reached within a few steps
SMOKE_TRIAD_MIB = 16  # --smoke's bandwidth arrays: quick, not beyond every cache


@dataclass(frozen=True)
class Network:
    name: str   # what --nets selects
    model: str  # path relative to the repository root
    batch: int
    timed_steps: int | None = None  # time only this many steps of each epoch, scaled to the epoch

    @property
    def label(self) -> str:
        return f"{Path(self.model).name} b{self.batch}"


# The wide networks are benchmark models, under bench/nets/ (models/ holds the shipped examples,
# every one of which tests/test_fuzz.py compiles). They time 60 of 234 and 30 of 468 steps an epoch:
# each framework then spends ~2-10 s a repetition on them rather than ~9-60 s.
NETWORKS = [Network("mlp", "models/mlp.net", 128), Network("twolayer", "models/twolayer.net", 100),
            Network("mlp-b8", "models/mlp.net", 8), Network("lenet", "models/lenet.net", 64),
            Network("mlp-wide", "bench/nets/mlp_wide.net", 256, timed_steps=60),
            Network("cnn-wide", "bench/nets/cnn_wide.net", 128, timed_steps=30)]
LATENCY = NETWORKS[2]


# ---- the machine ----------------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU's marketing name (from /proc/cpuinfo) and LLVM's name for it."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} (LLVM: {host_target().cpu})"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


FMA_CHAINS = 12   # independent accumulators: enough to cover FMA latency x FMA ports on x86 and ARM
FMA_UNROLL = 4
_FMA_FN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_float, ctypes.c_float,
                           ctypes.POINTER(ctypes.c_float))


def _fma_module(target: Target) -> tuple[ir.Module, int]:
    """`fma_peak(n, a, c, out)`: n iterations of FMA_UNROLL x FMA_CHAINS vector FMAs; flops per iteration.

    a and c are run-time arguments so LLVM cannot fold the chains; the sum is stored so it cannot drop them.
    """
    lanes = target.lanes("f32")
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(f32, lanes)
    module = ir.Module()
    module.triple = target.triple
    fma = ir.Function(module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64, f32, f32, f32.as_pointer()]), "fma_peak")
    n, a, c, out = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

    def splat(x: ir.Value) -> ir.Value:
        return b.shuffle_vector(b.insert_element(ir.Constant(vec, ir.Undefined), x, ir.Constant(i32, 0)),
                                ir.Constant(vec, ir.Undefined), zeros)

    va, vc = splat(a), splat(c)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64)
    accs = [b.phi(vec) for _ in range(FMA_CHAINS)]
    cur = list(accs)
    for _ in range(FMA_UNROLL):
        cur = [b.call(fma, [x, va, vc]) for x in cur]
    i_next = b.add(i, ir.Constant(i64, 1))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_next, loop)
    for phi, x in zip(accs, cur):
        phi.add_incoming(vc, entry)
        phi.add_incoming(x, loop)
    b.cbranch(b.icmp_unsigned("<", i_next, n), loop, done)
    b.position_at_end(done)
    total = cur[0]
    for x in cur[1:]:
        total = b.fadd(total, x)
    b.store(b.extract_element(total, ir.Constant(i32, 0)), out)
    b.ret_void()
    return module, 2 * lanes * FMA_CHAINS * FMA_UNROLL


def fma_peak(threads_list: list[int], seconds: float = 0.2) -> dict[int, float]:
    """Measured FP32 FMA GFLOP/s on 1..n threads (best of 3 runs of ~`seconds` each).

    Each thread runs the kernel through ctypes, which releases the GIL, so the threads run in parallel.
    """
    target = host_target()
    module, flops_per_iter = _fma_module(target)
    mod = llvm.parse_assembly(str(module))
    engine = llvm.create_mcjit_compiler(mod, target.target_machine())
    engine.finalize_object()
    kernel = _FMA_FN(engine.get_function_address("fma_peak"))
    sink = ctypes.c_float()

    def run(threads: int, iters: int) -> float:
        workers = [threading.Thread(target=kernel, args=(iters, 0.999, 1e-3, ctypes.byref(sink)))
                   for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - t0

    probe = 100_000
    iters = max(probe, int(probe * seconds / run(1, probe)))
    return {t: max(t * iters * flops_per_iter / run(t, iters) for _ in range(3)) / 1e9 for t in threads_list}


TRIAD_UNROLL = 4  # vectors per loop iteration
TRIAD_MIN_MIB = 64
CACHED_TRIAD_MIB = 4   # the in-cache reference: 3 x 4 MiB, beyond L2, within an L3 at least twice that
CACHED_TRIAD_PASSES = 50
_TRIAD_FN = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p)


def _triad_module(target: Target) -> tuple[ir.Module, int]:
    """`triad(n, s, a, b, c)`: a[i] = b[i] + s·c[i] for i < n (n a multiple of the elements per
    iteration, returned), in explicit vectors of the target's width; ordinary loads and stores, not
    assuming alignment (the benchmark's arrays are 64-byte aligned anyway)."""
    lanes = target.lanes("f32")
    f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
    vec = ir.VectorType(f32, lanes)
    module = ir.Module()
    module.triple = target.triple
    fma = ir.Function(module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")
    ptr = f32.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i64, f32, ptr, ptr, ptr]), "triad")
    n, s, a, bp, c = fn.args
    for arg in (a, bp, c):
        arg.add_attribute("noalias")
    entry, loop, done = (fn.append_basic_block(x) for x in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    vs = b.shuffle_vector(b.insert_element(ir.Constant(vec, ir.Undefined), s, ir.Constant(i32, 0)),
                          ir.Constant(vec, ir.Undefined), zeros)
    b.cbranch(b.icmp_unsigned(">", n, ir.Constant(i64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(i64)
    for u in range(TRIAD_UNROLL):
        j = b.add(i, ir.Constant(i64, u * lanes))
        at = lambda base: b.bitcast(b.gep(base, [j]), vec.as_pointer())  # noqa: E731
        vb, vc = b.load(at(bp), align=4), b.load(at(c), align=4)
        b.store(b.call(fma, [vs, vc, vb]), at(a), align=4)
    i_next = b.add(i, ir.Constant(i64, TRIAD_UNROLL * lanes))
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_next, loop)
    b.cbranch(b.icmp_unsigned("<", i_next, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    return module, TRIAD_UNROLL * lanes


def last_level_cache_bytes() -> int:
    """The largest CPU cache Linux reports (0 where it reports none)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=0)


def triad_mib() -> int:
    """MiB per array: the three together at least twice the last-level cache, and TRIAD_MIN_MIB."""
    return max(TRIAD_MIN_MIB, -(-2 * last_level_cache_bytes() // (3 * 2**20)))


def memory_bandwidth(threads_list: list[int], mib: float, runs: int = 5, passes: int = 1) -> dict[int, float]:
    """Measured GB/s of the triad on 1..n threads: the best of `runs` runs, each `passes` passes over
    three `mib` MiB arrays, each thread over its own contiguous share; bytes read and written, 12 per
    element. (Each thread's passes are ctypes calls, which release the GIL.)"""
    target = host_target()
    module, per_iter = _triad_module(target)
    mod = llvm.parse_assembly(str(module))
    engine = llvm.create_mcjit_compiler(mod, target.target_machine())
    engine.finalize_object()
    kernel = _TRIAD_FN(engine.get_function_address("triad"))
    n = int(mib * 2**20) // 4

    def array() -> np.ndarray:  # 64-byte aligned, touched (its pages faulted in before the timing)
        raw = np.empty(n + 16, np.float32)
        off = (-raw.ctypes.data % 64) // 4
        out = raw[off:off + n]
        out[...] = 1.0
        return out

    a, b, c = array(), array(), array()
    out = {}
    for t in threads_list:
        share = n // t // per_iter * per_iter

        def passes_of(w: int) -> None:
            ptrs = [x.ctypes.data + 4 * share * w for x in (a, b, c)]
            for _ in range(passes):
                kernel(share, 0.5, *ptrs)

        def run() -> float:
            workers = [threading.Thread(target=passes_of, args=(w,)) for w in range(t)]
            t0 = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return time.perf_counter() - t0

        out[t] = 12 * share * t * passes / min(run() for _ in range(runs)) / 1e9
    assert a[0] == 1.5 and a[t * share - 1] == 1.5, "the triad kernel computed something else"
    del engine
    return out


def blas_info() -> str:
    """Which BLAS library and kernel NumPy runs (via threadpoolctl, when installed)."""
    if importlib.util.find_spec("threadpoolctl") is None:
        return "NumPy BLAS kernel: unknown (threadpoolctl not installed)"
    from threadpoolctl import threadpool_info
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return "; ".join(f"NumPy BLAS: {p['internal_api']} {p.get('version')}, kernel {p.get('architecture')}, "
                     f"{p['num_threads']} threads" for p in pools) or "NumPy BLAS: none found"


# ---- the problem every framework solves -----------------------------------------------------

@dataclass
class Problem:
    """One network at one batch size, its data, and the initial weights every framework starts from."""

    net: Network
    prog: Any                      # graphc Program
    spec: NetSpec                  # the layers, as the peers build them
    init: dict[str, np.ndarray]    # graphc's initial params by name
    x: np.ndarray                  # [N, *spec.input_shape] float32
    rows: np.ndarray | tuple[np.ndarray, float]  # the same samples as graphc's trainer feeds them
    y: np.ndarray                  # [N] int32
    lr: float
    inputs: tuple[str, str]        # the model's image and label inputs

    @property
    def batch(self) -> int:
        return self.net.batch

    @property
    def steps(self) -> int:
        return len(self.x) // self.batch  # the trainer drops the remainder too

    @property
    def timed_steps(self) -> int:
        """Steps timed per epoch (the whole epoch unless the network says fewer)."""
        return min(self.net.timed_steps or self.steps, self.steps)

    def flops_per_step(self) -> float:
        return self.batch * self.spec.flops_per_sample()


def make_problem(net: Network, data: Any, samples: int | None) -> Problem:
    prog = load(ROOT / net.model)
    init = init_params(prog.graph.params, prog.train.seed)
    spec = read_spec(forward(prog, net.batch))
    g = forward(prog, net.batch)
    sources = bind(prog, g, {k: a[:samples] for k, a in data.train.items()}, {}, data.name, "train")
    dtypes = {i.value.name: i.value.dtype for i in g.inputs}
    (xin, images), (yin, labels) = sorted(sources.items(), key=lambda kv: dtypes[kv[0]] == "i32")
    x = rows(images, "f32", 0, len(labels)).reshape((-1,) + spec.input_shape)
    lr = float(prog.train.opt_args["lr"]) * net.batch / prog.train.batch  # the linear scaling rule
    return Problem(net, prog, spec, init, x, images, np.asarray(labels, np.int32), lr, (xin, yin))


# ---- the frameworks -------------------------------------------------------------------------

class Unsupported(Exception):
    """A framework that cannot train this network (the others it still runs)."""


class Trainer(Protocol):
    """What the benchmark needs of a framework (built from a Problem and a thread count)."""

    def step(self, idx: np.ndarray) -> Any:
        """One training step on samples `idx`; returns the loss (possibly a lazy device value)."""

    def mean(self, losses: list[Any]) -> float:
        """The mean of step losses as a float, waiting for any pending work."""


class Graphc:
    """The compiled step from the driver, fed exactly like graphc's trainer feeds it."""

    def __init__(self, p: Problem, threads: int | None) -> None:
        # not driver.train_graph: that adds the train block's schedule and clipping, which the peers lack
        g = training_graph(forward(p.prog, p.batch), "sgd", {"lr": p.lr, "momentum": MOMENTUM})
        params = {k: a.copy() for k, a in p.init.items()}
        self.cold = compile_graph(g, params, use_cache=False, threads=threads).seconds
        warm = compile_graph(g, params, threads=threads)
        if not warm.cache_hit:  # the first cached compile of this graph wrote the cache entry
            warm = compile_graph(g, params, threads=threads)
        self.warm = warm.seconds
        self.compiled = warm.step
        xin, yin = p.inputs
        warm.step.inputs["lr"][...] = p.lr
        self.feed = warm.step.feeder(**{xin: p.rows, yin: np.ascontiguousarray(p.y, warm.step.inputs[yin].dtype)})
        self.loss = p.prog.graph.loss

    def step(self, idx: np.ndarray) -> float:
        self.feed(idx)
        return float(self.compiled.run()[self.loss])

    def mean(self, losses: list[float]) -> float:
        return float(np.mean(losses))


class NumpyBaseline:
    """bench/numpy_baseline.py, started from graphc's initial weights."""

    def __init__(self, p: Problem) -> None:
        layers = p.spec.layers
        acts = {layer.act for layer in layers[:-1]}
        if not p.spec.is_mlp or len(acts) > 1 or None in acts or layers[-1].act:
            raise Unsupported("the hand-written NumPy baseline is an MLP with one hidden activation "
                              f"and linear outputs; this network is {p.spec}")
        sizes = [layer.w_shape[0] for layer in layers] + [layers[-1].w_shape[1]]
        self.mlp = NumpyMLP(sizes, next(iter(acts), "relu"), p.lr, MOMENTUM, SEED)
        self.mlp.params = [p.init[name].copy() for layer in layers for name in (layer.W, layer.b)]
        self.x, self.y = p.x, p.y
        self.xb = np.empty((p.batch,) + p.x.shape[1:], np.float32)
        self.yb = np.empty(p.batch, np.int32)

    def step(self, idx: np.ndarray) -> float:
        np.take(self.x, idx, axis=0, out=self.xb)
        np.take(self.y, idx, axis=0, out=self.yb)
        return self.mlp.step(self.xb, self.yb)

    def mean(self, losses: list[float]) -> float:
        return float(np.mean(losses))


class TorchNet:
    """PyTorch: conv2d / addmm layers with their biases, max pooling, cross-entropy and
    torch.optim.SGD, eager or under torch.compile."""

    def __init__(self, p: Problem, compiled: bool, threads: int | None) -> None:
        import torch
        import torch.nn.functional as F

        if threads:
            torch.set_num_threads(threads)
        if compiled:
            # A fresh start for TorchDynamo: each network's optimizer is a new object, and its step
            # compiles again under the same code; past the recompile limit (8, reached by the fifth
            # network) TorchDynamo would run it eagerly. The earlier networks' models are done.
            torch._dynamo.reset()
        self.torch, self.F, self.layers = torch, F, p.spec.layers
        # Conv weights are OIHW in both; conv biases are [out, 1, 1] in graphc, [out] in F.conv2d.
        self.params = [(torch.tensor(p.init[layer.W], requires_grad=True),
                        torch.tensor(p.init[layer.b].reshape(-1), requires_grad=True)) for layer in self.layers]
        self.opt = torch.optim.SGD([t for wb in self.params for t in wb], lr=p.lr, momentum=MOMENTUM)
        self.x, self.y = p.x, p.y.astype(np.int64)  # cross_entropy wants int64 labels
        self.xb = np.empty((p.batch,) + p.x.shape[1:], np.float32)
        self.yb = np.empty(p.batch, np.int64)
        self.txb, self.tyb = torch.from_numpy(self.xb), torch.from_numpy(self.yb)  # views: no copy
        self.loss_fn = torch.compile(self._loss) if compiled else self._loss
        self.update = torch.compile(self.opt.step) if compiled else self.opt.step

    def _loss(self, x: Any, y: Any) -> Any:
        h = x
        for layer, (w, b) in zip(self.layers, self.params):
            if layer.kind == "conv":
                h = self.F.conv2d(h, w, b, padding=layer.padding)
            else:
                h = self.torch.addmm(b, h.flatten(1), w)
            if layer.act:
                h = getattr(self.torch, layer.act)(h)
            if layer.pool:
                h = self.F.max_pool2d(h, layer.pool)
        return self.F.cross_entropy(h, y)

    def step(self, idx: np.ndarray) -> Any:
        np.take(self.x, idx, axis=0, out=self.xb)
        np.take(self.y, idx, axis=0, out=self.yb)
        loss = self.loss_fn(self.txb, self.tyb)
        self.opt.zero_grad()
        loss.backward()
        self.update()
        return loss.detach()

    def mean(self, losses: list[Any]) -> float:
        return float(self.torch.stack(losses).mean())


class JaxNet:
    """JAX: one jitted step (forward, grad, momentum update), fed host batches like the others."""

    def __init__(self, p: Problem) -> None:
        import jax
        import jax.numpy as jnp
        from jax import lax

        layers, lr = p.spec.layers, p.lr

        def loss_fn(params: list, x: Any, y: Any) -> Any:
            h = x
            for layer, (w, b) in zip(layers, params):
                if layer.kind == "conv":  # lax's default layouts are NCHW and OIHW, as graphc's
                    h = lax.conv_general_dilated(h, w, (1, 1), [(q, q) for q in layer.padding]) + b
                else:
                    h = h.reshape(len(h), -1) @ w + b
                if layer.act:
                    h = getattr(jax.nn, layer.act)(h)
                if layer.pool:
                    window = (1, 1) + layer.pool
                    h = lax.reduce_window(h, -jnp.inf, lax.max, window, window, "VALID")
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))

        def step(params: list, vel: list, x: Any, y: Any) -> tuple[list, list, Any]:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            vel = jax.tree.map(lambda v, g: MOMENTUM * v + g, vel, grads)
            return jax.tree.map(lambda w, v: w - lr * v, params, vel), vel, loss

        self.jnp = jnp
        self._step = jax.jit(step, donate_argnums=(0, 1))  # params and velocities update in place
        self.params = [(jnp.asarray(p.init[layer.W]), jnp.asarray(p.init[layer.b])) for layer in layers]
        self.vel = jax.tree.map(jnp.zeros_like, self.params)
        self.x, self.y = p.x, p.y

    def step(self, idx: np.ndarray) -> Any:
        # Fresh arrays, not reused buffers: on CPU JAX may read a NumPy array in place while the
        # step runs asynchronously, so refilling one buffer could change a batch still in use.
        self.params, self.vel, loss = self._step(self.params, self.vel, self.x[idx], self.y[idx])
        return loss

    def mean(self, losses: list[Any]) -> float:
        return float(self.jnp.mean(self.jnp.stack(losses)))  # waits for the queued steps


Factory = Callable[[Problem, int | None], Trainer]

# name -> (module it needs, how to build it)
FRAMEWORKS: dict[str, tuple[str | None, Factory]] = {
    "graphc": (None, Graphc),
    "numpy": (None, lambda p, t: NumpyBaseline(p)),
    "pytorch": ("torch", lambda p, t: TorchNet(p, False, t)),
    "torch.compile": ("torch", lambda p, t: TorchNet(p, True, t)),
    "jax": ("jax", lambda p, t: JaxNet(p)),
}


def missing(name: str) -> str | None:
    """Why framework `name` cannot run here, or None."""
    module = FRAMEWORKS[name][0]
    if module and importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install {module})"
    return None


# ---- measuring ------------------------------------------------------------------------------

def run_epoch(fw: Trainer, order: np.ndarray, batch: int) -> tuple[float, float]:
    """(seconds, mean loss) of one epoch over the batches of `order` (its start, for a network timed
    over fewer steps than an epoch)."""
    t0 = time.perf_counter()
    losses = [fw.step(order[i:i + batch]) for i in range(0, len(order) - batch + 1, batch)]
    loss = fw.mean(losses)
    return time.perf_counter() - t0, loss


def step_latency_us(fw: Trainer, order: np.ndarray, batch: int, steps: int) -> float:
    """Median wall time of one training step, waiting for its loss as a float each time.

    The batches change from step to step: repeating one batch overfits it, and the denormal floats in
    its vanishing gradients would slow down the frameworks that do not flush them to zero.
    """
    times = []
    for i in range(min(steps, len(order) // batch)):
        idx = order[i * batch:(i + 1) * batch]
        t0 = time.perf_counter()
        float(fw.step(idx))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


@dataclass
class Result:
    framework: str
    seconds: list[float] = field(default_factory=list)
    loss: float = float("nan")
    compile_cold: float | None = None
    compile_warm: float | None = None
    latency_us: float | None = None


def bench_network(p: Problem, names: list[str], reps: int, threads: int | None, latency_steps: int,
                  skip: Callable[[str, str], None]) -> dict[str, Result]:
    """Build every framework on `p`, then time `reps` epochs of each, alternating between them,
    then (if `latency_steps`) the latency of single steps."""
    trainers: dict[str, Trainer] = {}
    results: dict[str, Result] = {}
    warm_idx = np.arange(p.batch)
    for name in names:
        try:
            fw = FRAMEWORKS[name][1](p, threads)
            for _ in range(WARMUP_STEPS):
                fw.mean([fw.step(warm_idx)])
        except Unsupported as e:
            print(f"skipped {name} on {p.net.label}: {e}")
            continue
        except Exception as e:  # a peer that fails (e.g. torch.compile without a compiler) is skipped
            if name == "graphc":
                raise
            skip(name, f"failed on {p.net.label}: {type(e).__name__}: {str(e).strip().splitlines()[0][:160]}")
            continue
        trainers[name] = fw
        results[name] = Result(name, compile_cold=getattr(fw, "cold", None),
                               compile_warm=getattr(fw, "warm", None))
    for rep in range(reps):
        order = np.random.default_rng(SEED + 1 + rep).permutation(len(p.x))  # same batches for all
        order = order[:p.timed_steps * p.batch]
        for name, fw in trainers.items():
            seconds, loss = run_epoch(fw, order, p.batch)
            results[name].seconds.append(seconds)
            results[name].loss = loss
    order = np.random.default_rng(SEED + 1 + reps).permutation(len(p.x))
    for name, fw in trainers.items() if latency_steps else ():
        results[name].latency_us = step_latency_us(fw, order, p.batch, latency_steps)
    return results


def _proc_status_mib(key: str) -> float | None:
    """A memory figure (VmRSS, VmHWM) of this process from /proc, where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM first: unlike getrusage's ru_maxrss, it
    does not carry over the size of the parent that spawned this process, and it can be reset."""
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> float:
    """Restart the peak-memory count from the current RSS where Linux allows it; returns the start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset VmHWM to VmRSS
        return _proc_status_mib("VmRSS") or peak_rss_mib()
    except OSError:
        return peak_rss_mib()


def probe_rss(name: str, net: Network, samples: int | None, threads: int | None) -> tuple[float, float]:
    """(MiB resident with the data loaded, peak MiB while framework `name` builds and trains a few steps)."""
    p = make_problem(net, load_dataset("mnist"), samples)
    start = reset_peak_rss()
    fw = FRAMEWORKS[name][1](p, threads)
    fw.mean([fw.step(np.arange(i, i + p.batch) % len(p.x)) for i in range(MEMORY_STEPS)])
    return start, peak_rss_mib()


def measure_rss(names: list[str], net: Network, samples: int | None,
                threads: int | None) -> dict[str, tuple[float, float]]:
    """probe_rss for each framework, each in a fresh spawned process."""
    out = {}
    ctx = multiprocessing.get_context("spawn")
    for name in names:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            out[name] = pool.submit(probe_rss, name, net, samples, threads).result()
    return out


# ---- reporting ------------------------------------------------------------------------------

# ---- graphc kernel by kernel ----------------------------------------------------------------

LARGE = 256  # issue #21's large GEMMs: M, N and K all at least this
PROFILE_SECONDS = 0.5  # per profiling run; the fastest of PROFILE_RUNS counts (noise only slows)
PROFILE_RUNS = 3


@dataclass
class KernelCost:
    """One kernel of graphc's step: its time, and its work (FLOPs of a GEMM, bytes of a loop kernel)."""

    index: int
    kind: str          # "gemm" | "loop" | "other"
    group: str         # a GEMM's class, a loop kernel's ("update", "reduce", "elementwise"), else the kind
    what: str          # shape and ops, for the listing
    seconds: float     # per step
    flops: float = 0.0
    bytes: float = 0.0


@dataclass
class StepProfile:
    seconds: float     # per step, the profiling build's wall time
    steps: int         # profiled per run
    kernels: list[KernelCost]


def gemm_class(c: Contraction) -> str:
    small = [d for d, v in (("M", c.m), ("N", c.n), ("K", c.k)) if v < LARGE]
    return f"{','.join(small)} < {LARGE}" if small else f"M,N,K >= {LARGE}"


def _kernel_cost(k: Any, t: KernelTime, updated: set[int]) -> KernelCost:
    ops = " ".join(n.op for n in k.nodes)
    if k.kind is KernelKind.CONTRACT:
        c = lowered(k.nodes[0])
        assert isinstance(c, Contraction), k.nodes[0].op
        layout = "Aᵀ·B" if c.ta else "A·Bᵀ" if c.tb else "A·B"
        batch = f"{c.count} x " if c.batch else ""
        what = f"{batch}{c.m}x{c.n}x{c.k} {layout} -> {k.nodes[0].out.name} ({ops})"
        return KernelCost(t.index, "gemm", gemm_class(c), what, t.seconds, flops=t.flops)
    if k.kind in LOOPS:
        group = ("update" if any(id(v) in updated for v in k.outputs)
                 else "reduce" if k.kind in (KernelKind.REDUCE, KernelKind.ROWS) else "elementwise")
        what = f"{'x'.join(map(str, k.space))} {ops}"
        return KernelCost(t.index, "loop", group, what, t.seconds, bytes=t.bytes)
    return KernelCost(t.index, "other", k.kind.value, f"{'x'.join(map(str, k.space))} {ops}", t.seconds)


def profile_network(p: Problem, threads: int | None, smoke: bool) -> StepProfile:
    """graphc's step on `p` (the graph Graphc times: SGD momentum at p.lr, no schedule), kernel by
    kernel, through runtime/train/profile.py's profile_step; the fastest of PROFILE_RUNS runs."""
    train = dataclasses.replace(p.prog.train, optimizer="sgd", opt_args={"lr": p.lr, "momentum": MOMENTUM},
                                schedule="constant", schedule_args={}, clip_norm=None, batch=p.batch)
    prog = dataclasses.replace(p.prog, train=train)
    steps = 2 if smoke else 20
    wall, times = profile_step(prog, p.batch, steps, threads)  # compiles it; a first estimate of the step
    if not smoke:
        steps = max(20, min(2000, int(PROFILE_SECONDS / wall)))
        wall, times = min((profile_step(prog, p.batch, steps, threads) for _ in range(PROFILE_RUNS)),
                          key=lambda r: r[0])
    # the same graph scheduled again (the passes are deterministic) for what each kernel reads and writes
    sched = schedule(train_graph(prog, p.batch))
    updated = {id(new) for _, new in sched.graph.updates}
    costs = []
    for t in times:
        k = sched.kernels[t.index]
        assert (k.kind.value, tuple(k.space)) == (t.kind, t.space), "the schedule changed between builds"
        costs.append(_kernel_cost(k, t, updated))
    return StepProfile(wall, steps, costs)


def _share(part: list[KernelCost], total: float) -> float:
    return 100 * sum(k.seconds for k in part) / total


def _rate(part: list[KernelCost], work: str) -> float:
    """FLOP/s or bytes/s of `part` together."""
    seconds = sum(k.seconds for k in part)
    return sum(getattr(k, work) for k in part) / seconds if seconds else 0.0


def print_kernels(profiles: list[tuple[Problem, StepProfile]], peak: float, bandwidth: float,
                  cached: float | None, threads: int, top: int) -> None:
    print(f"\ngraphc's step kernel by kernel (profiling build, runtime/train/profile.py; fastest of "
          f"{PROFILE_RUNS} runs): GEMMs as 2·M·N·K GFLOP/s and % of the {threads}-thread FMA peak "
          f"{peak:.1f} GFLOP/s, loop kernels as GB/s of their inputs and outputs and % of the "
          f"{threads}-thread memory bandwidth {bandwidth:.1f} GB/s"
          + (f" (in brackets: % of the in-cache triad's {cached:.1f} GB/s)" if cached else ""))
    for p, prof in profiles:
        total = sum(k.seconds for k in prof.kernels) or 1.0
        gemms = [k for k in prof.kernels if k.kind == "gemm"]
        loops = [k for k in prof.kernels if k.kind == "loop"]
        other = [k for k in prof.kernels if k.kind == "other"]
        print(f"\n{p.net.label}: {prof.seconds * 1e3:.3f} ms/step ({prof.steps} steps); "
              f"GEMMs {_share(gemms, total):.1f}% of it at {100 * _rate(gemms, 'flops') / 1e9 / peak:.1f}% "
              f"of peak; memory-bound {_share(loops, total):.1f}% at "
              f"{100 * _rate(loops, 'bytes') / 1e9 / bandwidth:.1f}% of bandwidth"
              + (f" ({100 * _rate(loops, 'bytes') / 1e9 / cached:.0f}%)" if cached else "")
              + f"; other {_share(other, total):.1f}%")
        print(f"  {'GEMM class':16} {'kernels':>7} {'ms/step':>8} {'% step':>7} {'GFLOP/s':>8} {'% peak':>7}")
        groups = {k.group: [g for g in gemms if g.group == k.group] for k in gemms}
        for group, part in sorted(groups.items(), key=lambda gp: -sum(k.seconds for k in gp[1])):
            gflops = _rate(part, "flops") / 1e9
            print(f"  {group:16} {len(part):7d} {sum(k.seconds for k in part) * 1e3:8.3f} "
                  f"{_share(part, total):6.1f}% {gflops:8.1f} {100 * gflops / peak:6.1f}%")
        print(f"  {'loop kernels':16} {'kernels':>7} {'ms/step':>8} {'% step':>7} {'GB/s':>8} {'% bw':>7}")
        for group in ("update", "reduce", "elementwise"):
            part = [k for k in loops if k.group == group]
            if part:
                gbs = _rate(part, "bytes") / 1e9
                print(f"  {group:16} {len(part):7d} {sum(k.seconds for k in part) * 1e3:8.3f} "
                      f"{_share(part, total):6.1f}% {gbs:8.1f} {100 * gbs / bandwidth:6.1f}%")
        print("  biggest GEMMs:")
        for k in sorted(gemms, key=lambda k: -k.seconds)[:top]:
            gflops = k.flops / k.seconds / 1e9
            print(f"    {k.seconds * 1e3:8.3f} ms {100 * k.seconds / total:5.1f}% {gflops:7.1f} GFLOP/s "
                  f"{100 * gflops / peak:5.1f}%  #{k.index} {k.what}")
        print("  biggest loop kernels:")
        for k in sorted(loops, key=lambda k: -k.seconds)[:top]:
            gbs = k.bytes / k.seconds / 1e9
            print(f"    {k.seconds * 1e3:8.3f} ms {100 * k.seconds / total:5.1f}% {gbs:7.1f} GB/s "
                  f"{100 * gbs / bandwidth:5.1f}%  #{k.index} {k.group} {k.bytes / 2**20:.2f} MiB: {k.what}")


def print_table(rows: list[tuple[Problem, dict[str, Result]]], peak: float) -> None:
    """s/epoch medians, then graphc's time as a fraction of each peer's (the issues' targets)."""
    head = (f"{'network':18} {'framework':14} {'s/epoch':>9} {'x graphc':>9} {'GFLOP/s':>8} {'% peak':>7} "
            f"{'loss':>7} {'compile cold/warm s':>20}")
    print(head)
    print("-" * len(head))
    for p, results in rows:
        scale = p.steps / p.timed_steps  # 1 unless only the first steps of each epoch were timed
        base = statistics.median(results["graphc"].seconds) * scale
        for r in results.values():
            s = statistics.median(r.seconds) * scale
            gflops = p.steps * p.flops_per_step() / s / 1e9
            comp = f"{r.compile_cold:.3f} / {r.compile_warm:.3f}" if r.compile_cold is not None else "-"
            print(f"{p.net.label:18} {r.framework:14} {s:9.4f} {s / base:9.2f} {gflops:8.1f} "
                  f"{100 * gflops / peak:6.1f}% {r.loss:7.4f} {comp:>20}")
    print("\ngraphc's s/epoch as a fraction of each peer's (below 1: graphc is faster):")
    for p, results in rows:
        base = statistics.median(results["graphc"].seconds)
        peers = [f"{name} {base / statistics.median(r.seconds):.2f}" for name, r in results.items()
                 if name != "graphc"]
        print(f"  {p.net.label:18} " + ("  ".join(peers) or "(no peer ran)"))
    for p, _ in rows:
        if p.timed_steps < p.steps:
            print(f"{p.net.label}: s/epoch is the time of the first {p.timed_steps} of the epoch's "
                  f"{p.steps} steps, scaled to the whole epoch")


def print_latency(results: dict[str, Result]) -> None:
    base = results["graphc"].latency_us
    print(f"\nbatch-{LATENCY.batch} step latency (median µs of one step and its loss, {LATENCY.model}):")
    for name, r in results.items():
        print(f"  {name:14} {r.latency_us:8.1f} µs  ({r.latency_us / base:.2f}x graphc)")


def print_memory(rss: dict[str, tuple[float, float]], net: Network) -> None:
    print(f"\npeak RSS of a fresh process that loads MNIST, then builds the framework and trains "
          f"{net.label} for {MEMORY_STEPS} steps:")
    for name, (start, peak) in rss.items():
        print(f"  {name:14} {peak:6.0f} MiB  (+{peak - start:.0f} over the {start:.0f} MiB "
              f"resident with the data loaded)")


def cached_bandwidth(threads_list: list[int]) -> dict[int, float] | None:
    """The triad's GB/s over arrays that fit the last-level cache (repeated passes), where it has room."""
    if last_level_cache_bytes() < 2 * 3 * CACHED_TRIAD_MIB * 2**20:
        return None
    return memory_bandwidth(threads_list, CACHED_TRIAD_MIB, runs=3, passes=CACHED_TRIAD_PASSES)


def print_bandwidth(bandwidth: dict[int, float], mib: int, cached: dict[int, float] | None) -> None:
    rates = lambda r: ", ".join(f"{t} thread{'s' * (t > 1)} {g:.1f} GB/s" for t, g in r.items())  # noqa: E731
    print(f"memory bandwidth (generated triad a = b + s·c over 3 x {mib} MiB, bytes read + written): "
          + rates(bandwidth))
    if cached:
        print(f"  for reference, the same triad within the last-level cache ({CACHED_TRIAD_PASSES} passes "
              f"over 3 x {CACHED_TRIAD_MIB} MiB): " + rates(cached))


def machine(threads: int, smoke: bool) -> float:
    """Print what the machine is and runs; returns its measured FMA peak on `threads` threads."""
    print(f"CPU: {cpu_name()}, {cores()} cores; Python {platform.python_version()}, NumPy {np.__version__}")
    if UNSET_ENV:
        print("unset " + ", ".join(f"{k}={v}" for k, v in UNSET_ENV.items()) + " (they slow NumPy's OpenBLAS)")
    print(blas_info())
    peaks = fma_peak(sorted({1, threads}), seconds=0.05 if smoke else 0.2)
    print("FP32 FMA peak (generated kernel): "
          + ", ".join(f"{t} thread{'s' * (t > 1)} {g:.1f} GFLOP/s" for t, g in peaks.items()))
    return peaks[threads]


def machine_bandwidth(threads: int, smoke: bool) -> tuple[float, float | None]:
    """Print the machine's measured memory bandwidth; returns it and the in-cache triad's (GB/s;
    None without room in the cache) on `threads` threads."""
    mib = SMOKE_TRIAD_MIB if smoke else triad_mib()
    bandwidth = memory_bandwidth(sorted({1, threads}), mib, runs=2 if smoke else 5)
    cached = cached_bandwidth(sorted({1, threads}))
    print_bandwidth(bandwidth, mib, cached)
    return bandwidth[threads], cached[threads] if cached else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="timed epochs per framework and network (default 5)")
    ap.add_argument("--smoke", action="store_true",
                    help=f"{SMOKE_SAMPLES} training samples and 1 repetition: checks that everything runs")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for graphc and every peer (default: all cores)")
    ap.add_argument("--nets", nargs="+", choices=[n.name for n in NETWORKS], default=[n.name for n in NETWORKS],
                    metavar="NET", help="networks to benchmark: " + ", ".join(
                        f"{n.name} ({n.label})" for n in NETWORKS) + " (default: all)")
    args = ap.parse_args()
    nets = [n for n in NETWORKS if n.name in args.nets]
    reps = 1 if args.smoke else args.reps
    samples = SMOKE_SAMPLES if args.smoke else None
    threads_used = args.threads or cores()
    peak = machine(threads_used, args.smoke)
    bandwidth, cached = machine_bandwidth(threads_used, args.smoke)

    names = list(FRAMEWORKS)

    def skip(name: str, why: str) -> None:
        print(f"skipped {name}: {why}")
        names.remove(name)

    for name in FRAMEWORKS:
        if why := missing(name):
            skip(name, why)

    data = load_dataset("mnist")
    rows, profiles = [], []
    for net in nets:
        p = make_problem(net, data, samples)
        timed = f" (the first {p.timed_steps} timed)" if p.timed_steps < p.steps else ""
        print(f"{net.label}: {p.spec}, lr {p.lr}, {p.steps} steps/epoch{timed}, "
              f"{p.flops_per_step() * p.steps / 1e9:.2f} GFLOP/epoch ...", flush=True)
        latency_steps = (20 if args.smoke else 2000) if net == LATENCY else 0
        rows.append((p, bench_network(p, list(names), reps, args.threads, latency_steps, skip)))
        profiles.append((p, profile_network(p, args.threads, args.smoke)))
    ran = list(rows[0][1])
    print(f"peak RSS: {len(ran)} fresh processes ...", flush=True)
    rss = measure_rss(ran, nets[0], samples, args.threads)
    # measured again after the runs: a busy neighbour can only lower a measurement, so the best counts
    peak = max(peak, fma_peak([threads_used], seconds=0.05 if args.smoke else 0.2)[threads_used])
    if not args.smoke:
        bandwidth = max(bandwidth, memory_bandwidth([threads_used], triad_mib())[threads_used])
        if cached:
            cached = max(cached, (cached_bandwidth([threads_used]) or {}).get(threads_used, 0.0))

    print(f"\nmedian of {reps} epoch{'s' * (reps > 1)}; training FLOPs/step = 6·B·Σ m_i − 2·B·m_1 "
          f"(m_i: a layer's multiply-adds per sample); % of the {threads_used}-thread peak {peak:.1f} GFLOP/s; "
          f"x graphc = s/epoch ÷ graphc's")
    print_table(rows, peak)
    if LATENCY in nets:
        print_latency(next(results for p, results in rows if p.net == LATENCY))
    print_memory(rss, nets[0])
    print_kernels(profiles, peak, bandwidth, cached, threads_used, top=3 if args.smoke else 4)


if __name__ == "__main__":
    main()
