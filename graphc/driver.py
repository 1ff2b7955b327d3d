"""The one small driver that chains the stages: .net file -> bound graph -> schedule -> native step.

The CLI, the trainer and the tests go through these functions instead of wiring stages themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from graphc.autodiff.graphs import training_graph
from graphc.codegen.backend import Build, CpuBackend
from graphc.codegen.target import Target
from graphc.errors import GraphcError
from graphc.frontend import Program, load
from graphc.ir.bind import bind
from graphc.ir.graph import Graph
from graphc.passes.pipeline import Schedule, schedule
from graphc.runtime.execute.pool import pool, thread_count
from graphc.runtime.execute.step import Step

ENTRY = "graphc_step"

__all__ = ["load", "batch_dim", "forward", "train_graph", "compile_graph", "Compiled"]


def batch_dim(g: Graph) -> str | None:
    """The symbolic dim that leads the inputs (the batch), if any."""
    for i in g.inputs:
        if i.value.shape and isinstance(i.value.shape[0], str):
            return i.value.shape[0]
    return None


def forward(prog: Program, batch: int | None = None, dtype: str | None = None,
            training: bool = True) -> Graph:
    """The forward graph for training (or for evaluation) with its batch dim bound (and floats
    switched to `dtype` if given)."""
    dim = batch_dim(prog.graph)
    dims = {dim: batch if batch is not None else prog.train.batch} if dim else {}
    return bind(prog.graph if training else prog.eval_graph, dims, dtype)


def train_graph(prog: Program, batch: int | None = None, optimizer: str | None = None,
                opt_args: dict[str, float] | None = None, ranks: int = 1) -> Graph:
    """The training step of `prog` (its train block's optimizer unless `optimizer`/`opt_args` are
    given; always its schedule and gradient clipping). With `ranks` > 1: one rank's step of
    data-parallel training, on its `batch / ranks` rows of each global batch
    (graphc.autodiff.data_parallel; `for_rank` then gives a rank its own dropout masks)."""
    t = prog.train
    args = dict(t.opt_args if opt_args is None else opt_args)
    batch = t.batch if batch is None else batch
    if batch % ranks:
        raise GraphcError(f"a batch of {batch} does not split evenly over {ranks} ranks",
                          t.locs.get("batch") if batch == t.batch else None,  # else --batch gave it
                          hint=f"use a batch that is a multiple of {ranks}")
    return training_graph(forward(prog, batch // ranks), optimizer or t.optimizer, args, t.schedule,
                          t.schedule_args, t.clip_norm, ranks)


@dataclass
class Compiled:
    step: Step
    schedule: Schedule
    seconds: float    # wall time of passes + codegen (or cache load)
    cache_hit: bool


def compile_graph(g: Graph, params: dict[str, np.ndarray] | None = None,
                  target: Target | None = None, use_cache: bool = True,
                  threads: int | None = None, profile: bool = False,
                  check_bounds: bool = False) -> Compiled:
    """Schedule `g`, generate and load its native code (cached), and wrap it in a runnable Step.

    `threads` (default: all cores, or $GRAPHC_THREADS) splits large GEMMs across a worker pool;
    `profile` counts each kernel's cycles into `step.cycles`; `check_bounds` checks every access of
    the loop kernels and makes the step raise BoundsError on one outside its buffer."""
    t0 = time.perf_counter()
    backend = CpuBackend(target)
    threads = thread_count(threads)
    sched = schedule(g)
    native, hit = backend.load(sched, ENTRY, Build(threads, profile, check_bounds), use_cache)
    step = Step(sched, native, ENTRY, backend.target, params, pool(threads) if threads > 1 else None, profile,
                check_bounds)
    return Compiled(step, sched, time.perf_counter() - t0, hit)
