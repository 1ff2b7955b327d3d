"""Where a training step's time goes: runs a profiling build and reports each fused kernel's share.

The profiling build adds each kernel's CPU cycles (the time-stamp counter) to a counter array; a
kernel's time is its share of the counted cycles times the wall-clock time of the same steps. With
it, each kernel's rate: a GEMM's FLOP/s (2·M·N·K per product), a loop kernel's bytes/s (each array it
reads or writes counted once), to hold against the machine's FMA peak and memory bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from graphc import driver
from graphc.frontend import Program
from graphc.ir.graph import LR
from graphc.ir.init import init_params
from graphc.ops.lowering import Contraction
from graphc.ops.registry import lowered
from graphc.passes.fuse import LOOPS, Kernel, KernelKind
from graphc.passes.memory import nbytes


@dataclass
class KernelTime:
    index: int
    kind: str
    space: tuple[int, ...]
    ops: str          # the fused ops, in order
    seconds: float    # per step
    flops: float      # a GEMM's floating-point operations (else 0)
    bytes: float      # the bytes a loop kernel reads and writes (else 0)


def work(k: Kernel) -> tuple[float, float]:
    """(FLOPs, bytes) of kernel `k`: a GEMM's 2·M·N·K per product; a loop kernel's inputs and
    outputs, each once."""
    if k.kind is KernelKind.CONTRACT:
        c = lowered(k.nodes[0])
        assert isinstance(c, Contraction), k.nodes[0].op
        return 2.0 * c.macs, 0.0
    if k.kind in LOOPS:
        return 0.0, float(sum({id(v): nbytes(v) for v in (*k.inputs, *k.outputs)}.values()))
    return 0.0, 0.0


def profile_step(prog: Program, batch: int | None = None, steps: int = 20,
                 threads: int | None = None) -> tuple[float, list[KernelTime]]:
    """(seconds per step, per-kernel times) of the training step on random inputs."""
    g = driver.train_graph(prog, batch)
    step = driver.compile_graph(g, init_params(g.params, 0), threads=threads, profile=True).step
    rng = np.random.default_rng(0)
    for name, arr in step.inputs.items():  # pixels in [0, 1), class 0, a small lr
        arr[...] = rng.random(arr.shape) if arr.dtype.kind == "f" and arr.ndim else 0
    if LR in step.inputs:
        step.inputs[LR][...] = 1e-3
    step.run()  # warm-up: caches, page faults, pool start
    cycles = step.cycles
    assert cycles is not None  # a profiling build counts them
    cycles[:] = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        step.run()
    wall = (time.perf_counter() - t0) / steps
    # the step's own kernels: a loop's count includes its body's kernels, which also count their own
    top = cycles[:len(step.schedule.kernels)]
    per_cycle = wall / max(int(top.sum()) / steps, 1)
    kernels = [KernelTime(i, k.kind.value, tuple(k.space), " ".join(n.op for n in k.nodes),
                          cycles[i] / steps * per_cycle, *work(k))
               for i, k in enumerate(step.schedule.kernels) if cycles[i]]
    return wall, kernels


def _rate(kernels: list[KernelTime]) -> str:
    """The GEMMs' FLOP/s or the loop kernels' bytes/s of `kernels` together."""
    seconds = sum(k.seconds for k in kernels) or 1.0
    flops, moved = sum(k.flops for k in kernels), sum(k.bytes for k in kernels)
    return f"{flops / seconds / 1e9:.1f} GFLOP/s" if flops else f"{moved / seconds / 1e9:.1f} GB/s" if moved else ""


def format_profile(name: str, wall: float, kernels: list[KernelTime], top: int = 25) -> str:
    total = sum(k.seconds for k in kernels) or 1.0
    gemms, loops = [k for k in kernels if k.flops], [k for k in kernels if k.bytes]
    share = lambda part: 100 * sum(k.seconds for k in part) / total
    lines = [f"{name}: {wall * 1e6:.0f} us per training step, {len(kernels)} kernels; GEMMs "
             f"{share(gemms):.0f}% of it at {_rate(gemms) or '-'}, loop kernels {share(loops):.0f}% at "
             f"{_rate(loops) or '-'}",
             f"{'kernel':>6}  {'us':>8}  {'%':>5}  {'rate':>14}  {'kind':<11} {'space':<22} ops"]
    for k in sorted(kernels, key=lambda k: -k.seconds)[:top]:
        space = "x".join(map(str, k.space))
        lines.append(f"{k.index:>6}  {k.seconds * 1e6:>8.1f}  {100 * k.seconds / total:>5.1f}  {_rate([k]):>14}  "
                     f"{k.kind:<11} {space:<22} {k.ops}")
    return "\n".join(lines)
