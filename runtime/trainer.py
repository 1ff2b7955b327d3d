"""The trainer: feeds batches of a dataset to a compiled training step, evaluates, logs, saves.

Python only moves data here: each batch is copied into the step's input buffers and the whole
training step (forward, backward, update) runs as one native call.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from graphc.driver import Compiled, compile_graph, forward, train_graph
from graphc.errors import DataError, GraphcError
from graphc.frontend import Program
from graphc.ir.graph import Graph, Input
from graphc.runtime.checkpoint import save_arrays
from graphc.runtime.data import Dataset
from graphc.runtime.init import init_params

EVAL_BATCH = 1000


def data_inputs(g: Graph) -> tuple[Input, Input]:
    """The model's feature and label inputs: the first float and the first i32 input."""
    x = next((i for i in g.inputs if i.value.type.is_float and i.value.name != "lr"), None)
    y = next((i for i in g.inputs if i.value.dtype == "i32"), None)
    if x is None or y is None:
        raise GraphcError(f"model {g.name} needs a float feature input and an i32 label input to train")
    return x, y


def fit_features(x: np.ndarray, inp: Input, source: str) -> np.ndarray:
    """Reshape a dataset's samples to the model's per-sample input shape, or say why not."""
    shape = tuple(inp.value.shape[1:])
    if any(not isinstance(d, int) for d in shape) or math.prod(shape) != math.prod(x.shape[1:]):
        raise DataError(f"{source}: samples have shape {list(x.shape[1:])} but input "
                        f"{inp.value.name} takes {list(shape)} per sample")
    return np.ascontiguousarray(x.reshape((len(x),) + shape), dtype=np.float32
                                if inp.value.dtype == "f32" else np.float64)


@dataclass
class Evaluator:
    """Forward-only steps at the eval batch and at the remainder, sharing the trainer's params."""

    prog: Program
    params: dict[str, np.ndarray]
    threads: int | None = None
    steps: dict[int, Compiled] = field(default_factory=dict)

    def step(self, n: int) -> Compiled:
        if n not in self.steps:
            self.steps[n] = compile_graph(forward(self.prog, n), self.params, threads=self.threads)
        return self.steps[n]

    def __call__(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        g = self.prog.graph
        xin, yin = data_inputs(g)
        names = [g.loss] + list(g.metrics)
        total = dict.fromkeys(names, 0.0)
        batch = min(EVAL_BATCH, len(x))
        for s in range(0, len(x), batch):
            xb, yb = x[s:s + batch], y[s:s + batch]
            out = self.step(len(xb)).step(**{xin.value.name: xb, yin.value.name: yb})
            for k in names:
                total[k] += float(out[k]) * len(xb)
        return {k: v / len(x) for k, v in total.items()}


@dataclass
class TrainOptions:
    epochs: int
    batch: int
    lr: float
    seed: int
    optimizer: str
    opt_args: dict[str, float]
    log: Path | None = None
    out: Path | None = None
    progress: bool = True
    threads: int | None = None  # None: all cores


def train(prog: Program, data: Dataset, opt: TrainOptions,
          report: Callable[[str], None] = print) -> list[dict]:
    """Train `prog` on `data`; returns one metrics record per epoch."""
    g = prog.graph
    xin, yin = data_inputs(g)
    x_train = fit_features(data.x_train, xin, data.name)
    x_test = fit_features(data.x_test, xin, data.name)
    if len(x_train) < opt.batch:
        raise DataError(f"{data.name}: {len(x_train)} training samples, fewer than one batch of {opt.batch}")
    step_graph = train_graph(prog, opt.batch, opt.optimizer, opt.opt_args)
    params = init_params(step_graph.params, opt.seed)
    compiled = compile_graph(step_graph, params, threads=opt.threads)
    report(f"compiled {g.name} training step in {compiled.seconds:.2f} s"
           f"{' (cached)' if compiled.cache_hit else ''}: {len(compiled.schedule.kernels)} kernels, "
           f"arena {compiled.schedule.plan.arena_bytes / 1024:.0f} KiB")
    step = compiled.step
    evaluate = Evaluator(prog, params, opt.threads)
    rng = np.random.default_rng(opt.seed + 1)
    xb, yb = step.inputs[xin.value.name], step.inputs[yin.value.name]
    step.inputs["lr"][...] = opt.lr
    per_epoch = len(x_train) // opt.batch  # the remainder is dropped; shuffling covers it over epochs
    history = []
    log = open(opt.log, "a") if opt.log else None
    try:
        for epoch in range(1, opt.epochs + 1):
            t0 = time.perf_counter()
            order = rng.permutation(len(x_train))
            losses = np.empty(per_epoch)
            bar = tqdm(range(per_epoch), desc=f"epoch {epoch}/{opt.epochs}", unit="step", leave=False,
                       disable=not opt.progress, file=sys.stderr)
            for i in bar:
                idx = order[i * opt.batch:(i + 1) * opt.batch]
                np.take(x_train, idx, axis=0, out=xb)
                np.take(data.y_train, idx, axis=0, out=yb)
                losses[i] = step.run()[g.loss]
                if not math.isfinite(losses[i]):
                    raise GraphcError(f"loss became {losses[i]} at epoch {epoch}, step {i + 1}; "
                                      f"try a smaller learning rate")
            seconds = time.perf_counter() - t0
            test = evaluate(x_test, data.y_test)
            rec = {"epoch": epoch, "seconds": round(seconds, 4), "train_loss": float(losses.mean()),
                   "test_loss": test[g.loss]}
            rec.update({f"test_{m}": test[m] for m in g.metrics})
            history.append(rec)
            report(f"epoch {epoch}: " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()
                if k != "epoch"))
            if log:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if opt.out:
                save_params(opt.out / "params.npz", params, g.name, epoch)
    finally:
        if log:
            log.close()
    return history


def save_params(path: Path, params: dict[str, np.ndarray], model: str, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(path, params, {"model": model, "epoch": epoch})
