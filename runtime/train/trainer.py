"""The trainer: feeds batches of a dataset to a compiled training step, evaluates, logs, saves.

Python only orders the work here: each batch is picked into the step's input buffers by the
generated feed (runtime/execute/step.py's Feeder) and the whole training step (forward, backward, update)
runs as one native call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

from graphc.driver import Compiled, compile_graph, forward, train_graph
from graphc.errors import DataError, GraphcError
from graphc.autodiff.lr_schedule import horizon
from graphc.frontend import Program
from graphc.ir.graph import LR, Graph, Input
from graphc.ir.serialize import to_json
from graphc.ops import REGISTRY
from graphc.runtime.train.checkpoint import CHECKPOINT, PARAMS, Rollback, RunState, lock_run, save_arrays
from graphc.runtime.train.data import Dataset
from graphc.ir.init import init_params

EVAL_BATCH = 1000


def data_inputs(g: Graph) -> tuple[Input, Input]:
    """The model's feature and label inputs: the first float and the first i32 input."""
    x = next((i for i in g.inputs if i.value.type.is_float and i.value.name != LR), None)
    y = next((i for i in g.inputs if i.value.dtype == "i32"), None)
    if x is None or y is None:
        raise GraphcError(f"model {g.name} needs a float feature input and an i32 label input to train")
    return x, y


def fit_shape(x: np.ndarray, inp: Input, source: str) -> np.ndarray:
    """Reshape a dataset's samples to the model's per-sample input shape, or say why not."""
    shape = tuple(inp.value.shape[1:])
    if any(not isinstance(d, int) for d in shape) or math.prod(shape) != math.prod(x.shape[1:]):
        raise DataError(f"{source}: samples have shape {list(x.shape[1:])} but input "
                        f"{inp.value.name} takes {list(shape)} per sample", inp.loc)
    return x.reshape((len(x),) + shape)


def fit_features(x: np.ndarray, inp: Input, source: str) -> np.ndarray:
    """Float features reshaped to the model's per-sample input shape, in the input's dtype."""
    return np.ascontiguousarray(fit_shape(x, inp, source), dtype=np.float32
                                if inp.value.dtype == "f32" else np.float64)


def train_rows(data: Dataset, inp: Input) -> np.ndarray | tuple[np.ndarray, float]:
    """The training samples as a Feeder reads them: the bytes and their divisor where the data set
    keeps bytes (the feed converts each batch), else features in the input's dtype."""
    if data.raw_train.dtype == np.uint8:
        return fit_shape(data.raw_train, inp, data.name), data.divisor
    return fit_features(data.raw_train, inp, data.name)


def check_labels(y: np.ndarray, g: Graph, yin: Input, source: str, split: str) -> None:
    """Every label must name a class of each op that reads it: below the bound the op declares for
    it (an index into the logits' last axis, below onehot's n)."""
    for n in g.nodes:
        indices = REGISTRY[n.op].indices
        bounds = indices([x.type for x in n.inputs], n.attrs) if indices else {}
        for i, classes in bounds.items():
            bad = np.flatnonzero(y >= classes) if n.inputs[i] is yin.value and isinstance(classes, int) else []
            if len(bad):
                raise DataError(f"{source}: label {y[bad[0]]} of {split} sample {bad[0]} is out of "
                                f"range: {n.op} here takes {classes} classes (labels 0..{classes - 1})",
                                n.loc)


@dataclass
class Evaluator:
    """Forward-only steps (the evaluation form: no dropout, batch norm on running statistics) at the
    eval batch and at the remainder, sharing the trainer's params and model state."""

    prog: Program
    params: dict[str, np.ndarray]
    threads: int | None = None
    check_bounds: bool = False
    steps: dict[int, Compiled] = field(default_factory=dict)

    def step(self, n: int) -> Compiled:
        if n not in self.steps:
            self.steps[n] = compile_graph(forward(self.prog, n, training=False), self.params,
                                          threads=self.threads, check_bounds=self.check_bounds)
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
    resume: Path | None = None  # continue the run checkpointed in this directory
    checkpoint_every: int | None = None  # steps between checkpoints (besides each epoch's end)
    on_nonfinite: str = "stop"  # a NaN/Inf loss: "stop" training, or "skip" (undo) the batch
    check_bounds: bool = False  # bounds-check every loop-kernel access (slower; finds codegen bugs)
    force: bool = False  # replace a run already in `out` (else refused, unless resuming it)
    # arrays trained in place (checked shapes and dtypes): saved weights to start from, or a
    # graphc.Model's params; the model's arrays not named here start at their initializer
    params: dict[str, np.ndarray] = field(default_factory=dict)
    callbacks: tuple[Callable[[dict], None], ...] = ()  # each called with each epoch's record


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, taken between two batches; the message says where and what was saved."""


@contextlib.contextmanager
def _interrupts() -> Iterator[Callable[[], bool]]:
    """Turns Ctrl-C into a flag the loop reads between batches, so the run stops at a point it
    can be saved and resumed from exactly; a second Ctrl-C interrupts at once."""
    hits: list[int] = []

    def handler(signum: int, frame) -> None:
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C is not ours to handle
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


def _nonfinite(arrays: dict[str, np.ndarray]) -> str | None:
    """The name of the first array holding a NaN or Inf, if any: one pass over their memory."""
    return next((k for k, a in arrays.items() if not np.isfinite(a).all()), None)


def train(prog: Program, data: Dataset, opt: TrainOptions,
          report: Callable[[str], None] = print) -> list[dict]:
    """Train `prog` on `data`; returns one metrics record per epoch. The run directory `opt.out` is
    held for the whole run (checkpoint.lock_run), and a run already in it is kept unless this run
    resumes it or `opt.force` replaces it."""
    if opt.out is None:
        return _train(prog, data, opt, report)
    with lock_run(opt.out):
        _claim(opt)
        return _train(prog, data, opt, report)


def _claim(opt: TrainOptions) -> None:
    """Refuses a fresh run over the run in `opt.out` unless forced; forced, removes that run's files
    first, so that none of them is taken for the new run's."""
    if opt.resume and opt.resume.resolve() == opt.out.resolve():
        return
    old = [opt.out / name for name in (CHECKPOINT, PARAMS) if (opt.out / name).exists()]
    if old and not opt.force:
        raise DataError(f"{opt.out}: holds a run already ({', '.join(p.name for p in old)}); "
                        f"continue it with --resume {opt.out}, or pass --force to replace it")
    for path in old:
        try:
            path.unlink()
        except OSError as e:
            raise DataError(f"{path}: cannot replace it ({e.strerror or e})") from None


def graph_digest(g: Graph) -> str:
    """A hash of a training step's IR without source positions (a comment added to the model file
    must not stop a resume; a changed activation must)."""
    ir = to_json(g)
    for node in ir["nodes"]:
        node["loc"] = None
    return hashlib.sha256(json.dumps(ir, sort_keys=True).encode()).hexdigest()[:16]


def data_digest(data: Dataset, rows: int = 1024) -> str:
    """A cheap fingerprint of the training data: its shape, scale and labels, and `rows` samples
    spread evenly over it. Other data under the same name and size is caught; an edit to a sample
    that is not read here is not."""
    n = len(data.raw_train)
    h = hashlib.sha256(repr((data.raw_train.shape, data.raw_train.dtype.str, data.divisor)).encode())
    h.update(np.ascontiguousarray(data.y_train).tobytes())
    picked = np.linspace(0, n - 1, min(n, rows), dtype=np.int64)
    h.update(np.ascontiguousarray(data.raw_train[picked]).tobytes())
    return h.hexdigest()[:16]


def _train(prog: Program, data: Dataset, opt: TrainOptions, report: Callable[[str], None]) -> list[dict]:
    g = prog.graph
    xin, yin = data_inputs(g)
    x_train = train_rows(data, xin)
    x_test = fit_features(data.x_test, xin, data.name)
    check_labels(data.y_train, g, yin, data.name, "training")
    check_labels(data.y_test, g, yin, data.name, "test")
    samples = len(data.raw_train)
    if samples < opt.batch:
        written = prog.train.locs.get("batch") if opt.batch == prog.train.batch else None
        raise DataError(f"{data.name}: {samples} training samples, fewer than one batch of "
                        f"{opt.batch}", written)
    step_graph = train_graph(prog, opt.batch, opt.optimizer, opt.opt_args)
    # the model's arrays: its params and its state (batch norm's running statistics, dropout's step
    # counter), shared with the evaluator and saved together
    model_state = {s.value.name for s in g.state}
    params = init_params(step_graph.params + [s for s in step_graph.state
                                              if s.value.name in model_state], opt.seed)
    params.update(opt.params)
    compiled = compile_graph(step_graph, params, threads=opt.threads, check_bounds=opt.check_bounds)
    report(f"compiled {g.name} training step in {compiled.seconds:.2f} s"
           f"{' (cached)' if compiled.cache_hit else ''}: {len(compiled.schedule.kernels)} kernels, "
           f"arena {compiled.schedule.plan.arena_bytes / 1024:.0f} KiB")
    step = compiled.step
    evaluate = Evaluator(prog, params, opt.threads, opt.check_bounds)
    # check_labels: the labels fit the input's dtype
    feed = step.feeder(**{xin.value.name: x_train, yin.value.name: np.ascontiguousarray(
        data.y_train, step.inputs[yin.value.name].dtype)})
    per_epoch = samples // opt.batch  # the remainder is dropped; shuffling covers it over epochs
    for name, v in {LR: opt.lr, **horizon(per_epoch, opt.epochs)}.items():
        if name in step.inputs:  # a schedule has the run's length as inputs when it needs it
            step.inputs[name][...] = v
    config = {"model": g.name, "batch": opt.batch, "lr": opt.lr, "seed": opt.seed,
              "optimizer": opt.optimizer, "opt_args": opt.opt_args, "data": data.name,
              "samples": samples, "graph_sha256": graph_digest(step_graph),
              "data_sha256": data_digest(data)}
    if "total_steps" in step.inputs:  # a schedule over the run's length: it must not change
        config["epochs"] = opt.epochs
    run = RunState(params, {k: v for k, v in step.state.items() if k not in params},
                   np.random.default_rng(opt.seed + 1), config)
    saves = _Checkpoints(run, opt.out, g.name)
    if opt.resume:
        run.restore(opt.resume, samples, per_epoch)
        saves.last = (run.epoch, run.step)
        done = ""
        if run.epoch > opt.epochs:  # a schedule's horizon is part of config: it cannot grow
            more = ("its learning-rate schedule spans them, so it cannot train on: a longer run "
                    "starts anew" if "epochs" in config else "--epochs N trains on")
            done = f"; its {opt.epochs} epochs are done ({more})"
            if run.step == 0:  # its final params, in case params.npz is missing or older
                saves.params(run.epoch - 1)
        report(f"resumed from {opt.resume / CHECKPOINT} at epoch {run.epoch}, step {run.step}{done}")
    # only a run that skips bad batches pays for a copy of the step's buffers before each one
    rollback = Rollback({**run.params, **run.state}) if opt.on_nonfinite == "skip" else None
    every = opt.checkpoint_every or 0
    history = []
    try:  # unbuffered: a failed write (a full disk) is reported once, where it happens
        log = open(opt.log, "ab", buffering=0) if opt.log else None
    except OSError as e:
        raise GraphcError(f"cannot open the log {opt.log}: {e.strerror}") from None
    try:
        with _interrupts() as interrupted:
            while run.epoch <= opt.epochs:
                epoch, t0 = run.epoch, time.perf_counter()
                before = (epoch - 1) * per_epoch  # steps done in earlier epochs
                run.start_epoch(samples, per_epoch)
                for i in tqdm(range(run.step, per_epoch), desc=f"epoch {epoch}/{opt.epochs}",
                              unit="step", leave=False, disable=not opt.progress, file=sys.stderr,
                              initial=run.step, total=per_epoch):
                    feed(run.order[i * opt.batch:(i + 1) * opt.batch])
                    if rollback:
                        rollback.take()
                    loss = float(step.run()[g.loss])
                    if rollback and not (math.isfinite(loss) and _nonfinite(rollback.live) is None):
                        rollback.undo()  # skipped: its loss stays NaN in run.losses
                    elif not math.isfinite(loss):
                        raise saves.nonfinite(f"loss became {loss}", epoch, i + 1)
                    else:
                        run.losses[i] = loss
                    run.step = i + 1
                    if interrupted():
                        saves.save(epoch, run.step)
                        raise saves.stopped()
                    # the epoch's last step is saved by the epoch's end, just below
                    if every and run.step < per_epoch and (before + run.step) % every == 0:
                        saves.save(epoch, run.step)
                seconds = time.perf_counter() - t0
                skipped = int(np.isnan(run.losses).sum())
                train_loss = float(np.nanmean(run.losses)) if skipped < per_epoch else math.nan
                run.end_epoch()
                saves.save(epoch, per_epoch, finished=True)
                test = evaluate(x_test, data.y_test)
                rec = {"epoch": epoch, "seconds": round(seconds, 4), "train_loss": train_loss,
                       "test_loss": test[g.loss]}
                rec.update({f"test_{m}": test[m] for m in g.metrics})
                if skipped:
                    rec["skipped_batches"] = skipped
                history.append(rec)
                for callback in opt.callbacks:
                    callback(rec)
                report(f"epoch {epoch}: " + "  ".join(
                    f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()
                    if k != "epoch"))
                if log:
                    try:
                        log.write(json.dumps(rec).encode() + b"\n")
                    except OSError as e:  # a full disk: with --out, the epoch is checkpointed already
                        raise GraphcError(f"cannot write the log {opt.log}: {e.strerror}") from None
                if interrupted() and run.epoch <= opt.epochs:
                    raise saves.stopped()
    finally:
        if log:
            log.close()
    return history


@dataclass
class _Checkpoints:
    """Writes the run's checkpoints into `out` (None: nowhere) and words what happened to them."""

    run: RunState
    out: Path | None
    model: str
    last: tuple[int, int] | None = None  # (epoch, step) of the checkpoint on disk

    def save(self, epoch: int, step: int, finished: bool = False) -> None:
        """Saves the run, just after `step` of `epoch`, after checking its params (each epoch's end,
        with or without `out`): a NaN behind a finite loss (relu maps NaN to 0) stops the run, and
        never replaces a good checkpoint. A `finished` epoch also writes params.npz, first: killed
        before the checkpoint follows, a resume redoes the epoch and writes both again."""
        bad = _nonfinite(self.run.params)
        if bad:
            raise self.nonfinite(f"param {bad} became NaN or Inf", epoch, step)
        if self.out is None:
            return
        if finished:
            self.params(epoch)
        self.run.save(self.out)
        self.last = (self.run.epoch, self.run.step)

    def params(self, epoch: int) -> None:
        """Writes the params as they are after `epoch` to params.npz."""
        if self.out is not None:
            save_arrays(self.out / PARAMS, self.run.params, {"model": self.model, "epoch": epoch})

    def nonfinite(self, what: str, epoch: int, step: int) -> GraphcError:
        kept = (f"; the last checkpoint, {self.out / CHECKPOINT} (at epoch {self.last[0]}, step "
                f"{self.last[1]}), is good: continue with --resume {self.out}" if self.last else "")
        return GraphcError(f"{what} at epoch {epoch}, step {step}; training stopped{kept}",
                           hint="try a smaller learning rate, or --on-nonfinite skip to skip such batches")

    def stopped(self) -> TrainingInterrupted:
        where = f"interrupted at epoch {self.run.epoch}, step {self.run.step}"
        if self.out is None:
            return TrainingInterrupted(f"{where}; nothing saved (--out DIR keeps checkpoints)")
        return TrainingInterrupted(f"{where}; checkpoint saved to {self.out / CHECKPOINT}: "
                                   f"continue with --resume {self.out}")

