"""The trainer: feeds batches of a dataset to a compiled training step, evaluates, logs, saves.

Python only orders the work here: each batch is picked into the step's input buffers by the
generated feed (runtime/execute/step.py's Feeder; text's windows by NumPy, runtime/train/feeds.py)
and the whole training step (forward, backward, update) runs as one native call. The step is
compiled here, or given (a TrainingStep: graphc.Model's, whose optimizer state carries on).

With a validation split, each epoch's validation loss picks the best params (kept in the run state,
so across --resume too: params.best.npz, patience), and the test split is evaluated once at the
end, with the best params and with the last ones.

An epoch is a shuffled pass over the training samples, or, with `steps_per_epoch` (text's default:
TEXT_STEPS), that many steps whose batches are drawn at random, with replacement. Either way the
run's generator draws the epoch's order when it starts, and checkpoints keep it, so a resumed run
trains on exactly the batches an uninterrupted one would. A language model (text data) also reports
its validation loss in bits per byte (`bpb`: nats / ln 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from graphc.autodiff.data_parallel import SLOT, VOTE, VOTES, for_rank
from graphc.driver import Compiled, batch_dim, compile_graph, forward, train_graph
from graphc.errors import DataError, GraphcError
from graphc.autodiff.lr_schedule import horizon
from graphc.frontend import Program
from graphc.ir.graph import LR, Graph
from graphc.ir.serialize import to_json
from graphc.runtime.train.checkpoint import CHECKPOINT, PARAMS, Rollback, RunState, lock_run, save_arrays
from graphc.runtime.train.data import Dataset
from graphc.runtime.train.distributed import Ranks
from graphc.runtime.train.feeds import Source, bind_split, fed_inputs, feeder, rows, samples, scales

__all__ = ["BEST", "EVAL_BATCH", "Evaluator", "TrainOptions", "TrainingInterrupted", "TrainingStep",
           "model_arrays", "train"]
from graphc.ir.init import init_params

EVAL_BATCH = 1000
TEXT_STEPS = 500  # steps per epoch on text, unless steps_per_epoch says otherwise
BEST = "params.best.npz"  # the params of the epoch with the lowest validation loss


@dataclass
class Evaluator:
    """Forward-only steps (the evaluation form: no dropout, batch norm on running statistics) at the
    eval batch and at the remainder, sharing the trainer's params and model state. A model with a
    fixed batch (no `dim` leads its inputs) is evaluated in batches of that size; the remainder,
    which it cannot take, is left out, and `note` says so once. `batch` replaces the eval batch (text:
    the training batch, whose step fits in memory; a window is many samples' worth of activations);
    `text` adds the loss in bits per byte, `bpb`."""

    prog: Program
    params: dict[str, np.ndarray]
    threads: int | None = None
    check_bounds: bool = False
    steps: dict[int, Compiled] = field(default_factory=dict)
    note: Callable[[str], None] = print
    noted: set[str] = field(default_factory=set)  # the splits whose left-out remainder was noted
    batch: int | None = None
    text: bool = False
    ranks: Ranks | None = None  # data-parallel: each rank evaluates every size-th batch

    def step(self, n: int) -> Compiled:
        if n not in self.steps:
            self.steps[n] = compile_graph(forward(self.prog, n, training=False), self.params,
                                          threads=self.threads, check_bounds=self.check_bounds)
        return self.steps[n]

    def fixed(self) -> int | None:
        """The model's fixed batch, if its inputs have one."""
        if batch_dim(self.prog.graph):
            return None
        return next(int(i.value.shape[0]) for i in fed_inputs(self.prog.graph) if i.value.shape)

    def __call__(self, sources: dict[str, Source], split: str = "test") -> dict[str, float]:
        g = self.prog.graph
        names = [g.loss_name()] + list(g.metrics)
        total = dict.fromkeys(names, 0.0)
        n, fixed = samples(sources), self.fixed()
        batch = fixed or min(self.batch or EVAL_BATCH, n)
        if fixed and n < fixed:
            raise DataError(f"the {split} split holds {n} samples, fewer than the model's fixed batch "
                            f"of {fixed}: it can evaluate none", g.inputs[0].loc,
                            hint="declare `dim B` and use it for the batch, or give more samples")
        used = n - n % batch if fixed else n
        if used < n and split not in self.noted:
            self.noted.add(split)
            self.note(f"note: {n - used} of {n} {split} samples left out of evaluation: the model's "
                      f"batch is fixed at {fixed} (declare `dim B` to use them all)")
        types = {i.value.name: i.value.dtype for i in g.inputs}
        starts = range(0, used, batch)
        for s in starts[self.ranks.rank::self.ranks.size] if self.ranks else starts:
            e = min(s + batch, used)
            out = self.step(e - s).step(**{k: rows(src, types[k], s, e) for k, src in sources.items()})
            for k in names:
                total[k] += float(out[k]) * (e - s)
        if self.ranks:
            total = dict(zip(names, (float(x) for x in self.ranks.sum(np.array(list(total.values()))))))
        result = {k: v / used for k, v in total.items()}
        if self.text:  # a byte per token: the loss in nats per byte, in bits
            result["bpb"] = result[names[0]] / math.log(2)
        return result


def model_arrays(prog: Program, step_graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """The model's arrays, drawn by their initializers: its params and its state (batch norm's
    running statistics, dropout's step counter), which evaluation shares and params.npz holds; the
    training step's other state (the optimizer's) lives in the compiled step."""
    model_state = {s.value.name for s in prog.graph.state}
    return init_params(step_graph.params + [s for s in step_graph.state if s.value.name in model_state],
                       seed)


@dataclass
class TrainingStep:
    """A compiled training step, the graph it was compiled from (what a checkpoint fingerprints) and
    the model's arrays it trains in place; its optimizer state (momentum, Adam's moments, the step
    counter) lives in `compiled.step.state`, so whoever runs this step continues that state."""

    graph: Graph
    compiled: Compiled
    params: dict[str, np.ndarray]

    @classmethod
    def build(cls, graph: Graph, params: dict[str, np.ndarray], threads: int | None = None,
              check_bounds: bool = False, ranks: Ranks | None = None) -> TrainingStep:
        """Compiles `graph`; a data-parallel step (train_graph(ranks=N)) is compiled for this
        process's rank, its allreduce bound to MPI's."""
        compiled = compile_graph(for_rank(graph, ranks.rank) if ranks else graph, params, threads=threads,
                                 check_bounds=check_bounds)
        if ranks:
            compiled.step.bind_extern(SLOT, ranks.allreduce_in_place)
        return cls(graph, compiled, params)


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
    # arrays trained in place (checked shapes and dtypes): saved weights to start from; the model's
    # arrays not named here start at their initializer
    params: dict[str, np.ndarray] = field(default_factory=dict)
    # the step to train with, its params and optimizer state as they are (graphc.Model's, shared
    # with Model.step; batch and optimizer above must be its own); None: one is compiled
    step: TrainingStep | None = None
    callbacks: tuple[Callable[[dict], None], ...] = ()  # each called with each epoch's record
    data_map: dict[str, str] = field(default_factory=dict)  # input -> the array that feeds it
    patience: int | None = None  # stop after this many epochs without a better validation loss
    # an epoch of this many steps, each drawing its batch at random; None: a shuffled pass (text: TEXT_STEPS)
    steps_per_epoch: int | None = None
    # data-parallel over these processes (runtime/train/distributed.py): each takes its share of
    # every batch; rank 0 alone reports, logs and writes; threads default to the cores per process
    ranks: Ranks | None = None


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, taken between two batches; the message says where and what was saved. A
    data-parallel run's ranks vote on it inside the step, so every rank stops after the same one."""

    collective = True


class NonFinite(GraphcError):
    """A NaN or Inf loss or param: the run stops. Data-parallel, every rank sees the same (the loss
    is the global one, the params are equal)."""

    collective = True


@contextlib.contextmanager
def _interrupts() -> Iterator[Callable[[], bool]]:
    """Turns Ctrl-C, and SIGTERM (what mpirun sends every rank on a Ctrl-C, and a batch scheduler
    before it stops a job), into a flag the loop reads between batches, so the run stops at a
    point it can be saved and resumed from exactly; a second signal interrupts at once."""
    hits: list[int] = []

    def handler(signum: int, frame) -> None:
        if hits:
            raise KeyboardInterrupt
        hits.append(signum)

    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals are not ours to handle
        yield lambda: False
        return
    try:
        yield lambda: bool(hits)
    finally:
        for sig, was in previous.items():
            signal.signal(sig, was)


def _nonfinite(arrays: dict[str, np.ndarray]) -> str | None:
    """The name of the first array holding a NaN or Inf, if any: one pass over their memory."""
    return next((k for k, a in arrays.items() if not np.isfinite(a).all()), None)


def train(prog: Program, data: Dataset, opt: TrainOptions,
          report: Callable[[str], None] = print) -> list[dict]:
    """Train `prog` on `data`; returns one metrics record per epoch. The run directory `opt.out` is
    held for the whole run (checkpoint.lock_run), and a run already in it is kept unless this run
    resumes it or `opt.force` replaces it. Data-parallel (`opt.ranks`), rank 0 alone reports,
    holds the run directory and writes to it."""
    if opt.ranks and opt.ranks.rank:
        opt = dataclasses.replace(opt, out=None, log=None, progress=False)
        report = _silent
    with contextlib.ExitStack() as held:
        with _together(opt.ranks):
            if opt.out is not None:
                held.enter_context(lock_run(opt.out))
                _claim(opt, opt.out)
        return _train(prog, data, opt, report)


def _silent(line: str) -> None:
    """The report of a rank other than 0."""


def _together(ranks: Ranks | None) -> contextlib.AbstractContextManager[None]:
    """A stretch of setup every rank goes through, failing together (Ranks.together)."""
    return ranks.together() if ranks else contextlib.nullcontext()


def _claim(opt: TrainOptions, out: Path) -> None:
    """Refuses a fresh run over the run in `out` (opt.out) unless forced; forced, removes that run's
    files first, so that none of them is taken for the new run's."""
    if opt.resume and opt.resume.resolve() == out.resolve():
        return
    old = [out / name for name in (CHECKPOINT, PARAMS) if (out / name).exists()]
    if old and not opt.force:
        raise DataError(f"{out}: holds a run already ({', '.join(p.name for p in old)}); "
                        f"continue it with --resume {out}, or pass --force to replace it")
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


def data_digest(sources: dict[str, Source], picks: int = 1024) -> str:
    """A cheap fingerprint of the training samples as fed: each input's shape, dtype and scale, and
    `picks` samples spread evenly over them. Other data under the same name and size is caught; an
    edit to a sample that is not read here is not."""
    n = samples(sources)
    picked = np.linspace(0, n - 1, min(n, picks), dtype=np.int64)
    h = hashlib.sha256()
    for name, src in sorted(sources.items()):
        a, divisor = src if isinstance(src, tuple) else (src, 1.0)
        h.update(repr((name, a.shape, a.dtype.str, divisor)).encode())
        h.update(np.ascontiguousarray(a[picked]).tobytes())
    return h.hexdigest()[:16]


def _train(prog: Program, data: Dataset, opt: TrainOptions, report: Callable[[str], None]) -> list[dict]:
    g, ranks = prog.graph, opt.ranks
    with _together(ranks):  # every rank sets up, and fails together
        step_graph = opt.step.graph if opt.step else train_graph(prog, opt.batch, opt.optimizer, opt.opt_args,
                                                                 ranks.size if ranks else 1)
        loss_key = g.loss_name()
        fed = {k: bind_split(prog, step_graph, data, k, opt.data_map) for k in data.splits()}
        if opt.patience and "validation" not in fed:
            raise GraphcError("patience needs a validation split: validation = 0.1 (or a file) in the "
                              "train block, or --validation", prog.train.locs.get("patience"))
        n_train = samples(fed["train"])
        steps = opt.steps_per_epoch or (TEXT_STEPS if data.text else None)
        if steps is None and n_train < opt.batch:
            written = prog.train.locs.get("batch") if opt.batch == prog.train.batch else None
            raise DataError(f"{data.name}: {n_train} training samples, fewer than one batch of "
                            f"{opt.batch}", written)
        threads = opt.threads or (ranks.threads() if ranks else None)
        trained = opt.step or TrainingStep.build(
            step_graph, model_arrays(prog, step_graph, opt.seed) | opt.params, threads, opt.check_bounds, ranks)
        compiled, params = trained.compiled, trained.params
        report(f"compiled {g.name} training step in {compiled.seconds:.2f} s"
               f"{' (cached)' if compiled.cache_hit else ''}: {len(compiled.schedule.kernels)} kernels, "
               f"arena {compiled.schedule.plan.arena_bytes / 1024:.0f} KiB")
        step = compiled.step
        evaluate = Evaluator(prog, params, threads, opt.check_bounds, note=report,
                             batch=opt.batch if data.text else None, text=data.text, ranks=ranks)
        # a rank's rows of each global batch
        rows_per, first = (opt.batch // ranks.size, opt.batch // ranks.size * ranks.rank) if ranks else (opt.batch, 0)
        feed = feeder(step, fed["train"])
        per_epoch = steps or n_train // opt.batch  # a pass drops the remainder; shuffling covers it
        for name, v in {LR: opt.lr, **horizon(per_epoch, opt.epochs)}.items():
            if name in step.inputs:  # a schedule has the run's length as inputs when it needs it
                step.inputs[name][...] = v
        config = {"model": g.name, "batch": opt.batch, "lr": opt.lr, "seed": opt.seed,
                  "optimizer": opt.optimizer, "opt_args": opt.opt_args, "data": data.name,
                  "samples": n_train, "graph_sha256": graph_digest(step_graph),
                  "data_sha256": data_digest(fed["train"]), "scale": scales(prog)}
        if "total_steps" in step.inputs:  # a schedule over the run's length: it must not change
            config["epochs"] = opt.epochs
        if steps:
            config["steps_per_epoch"] = steps
        if ranks:  # the dropout masks depend on it
            config["ranks"] = ranks.size
        validates = "validation" in fed
        if validates:  # what the best params were chosen on
            config["validation"] = samples(fed["validation"])
        run = RunState(params, {k: v for k, v in step.state.items() if k not in params},
                       np.random.default_rng(opt.seed + 1), config, draw=opt.batch if steps else None,
                       best_params={k: v.copy() for k, v in params.items()} if validates else None)
        saves = _Checkpoints(run, opt.out, g.name, scales(prog))
        if opt.resume:
            run.restore(opt.resume, n_train, per_epoch)
            saves.last = (run.epoch, run.step)
            done = ""
            if run.epoch > opt.epochs:  # a schedule's horizon is part of config: it cannot grow
                more = ("its learning-rate schedule spans them, so it cannot train on: a longer run "
                        "starts anew" if "epochs" in config else "--epochs N trains on")
                done = f"; its {opt.epochs} epochs are done ({more})"
                if run.step == 0:  # its final and best params, in case either file is missing or older
                    saves.params(run.epoch - 1)
                    saves.best()
            report(f"resumed from {opt.resume / CHECKPOINT} at epoch {run.epoch}, step {run.step}{done}")
        # only a run that skips bad batches pays for a copy of the step's buffers before each one
        rollback = Rollback({**run.params, **run.state}) if opt.on_nonfinite == "skip" else None
        every = opt.checkpoint_every or 0
        history: list[dict] = []
        try:  # unbuffered: a failed write (a full disk) is reported once, where it happens
            log = open(opt.log, "ab", buffering=0) if opt.log else None
        except OSError as e:
            raise GraphcError(f"cannot open the log {opt.log}: {e.strerror}") from None
    try:
        with _interrupts() as interrupted:
            while run.epoch <= opt.epochs:
                epoch, t0 = run.epoch, time.perf_counter()
                before = (epoch - 1) * per_epoch  # steps done in earlier epochs
                order, losses = run.start_epoch(n_train, per_epoch)
                bar = tqdm(range(run.step, per_epoch), desc=f"epoch {epoch}/{opt.epochs}", unit="step",
                           leave=False, disable=not opt.progress, file=sys.stderr, initial=run.step,
                           total=per_epoch)
                # the epoch's mean loss so far, then the last epoch's evaluation, as the bar's postfix
                so_far = losses[:run.step]
                total, count = float(np.nansum(so_far)), int(np.isfinite(so_far).sum())
                last = "".join(f"  {k} {v:.4f}" for k, v in history[-1].items()
                               if k.startswith(("val_", "test_"))) if history else ""
                for i in bar:
                    feed(order[i * opt.batch + first:i * opt.batch + first + rows_per])
                    if rollback:
                        rollback.take()
                    if ranks:
                        step.inputs[VOTE][...] = interrupted()
                    out = step.run()
                    loss = float(out[loss_key])
                    if rollback and not (math.isfinite(loss) and _nonfinite(rollback.live) is None):
                        rollback.undo()  # skipped: its loss stays NaN in run.losses
                    elif not math.isfinite(loss):
                        raise saves.nonfinite(f"loss became {loss}", epoch, i + 1)
                    else:
                        losses[i] = loss
                        total, count = total + loss, count + 1
                        bar.set_postfix_str(f"loss {total / count:.4f}{last}", refresh=False)
                    run.step = i + 1
                    if out[VOTES] > 0 if ranks else interrupted():
                        saves.save(epoch, run.step)
                        raise saves.stopped()
                    # the epoch's last step is saved by the epoch's end, just below
                    if every and run.step < per_epoch and (before + run.step) % every == 0:
                        saves.save(epoch, run.step)
                seconds = time.perf_counter() - t0
                skipped = int(np.isnan(losses).sum())
                train_loss = float(np.nanmean(losses)) if skipped < per_epoch else math.nan
                run.end_epoch()
                split = "validation" if validates else "test"
                if ranks:  # each rank's batch norm statistics are its own: all evaluate with rank 0's
                    ranks.share({s.value.name: params[s.value.name] for s in g.state})
                result = evaluate(fed[split], split)
                # evaluated before the checkpoint, which holds the best record this epoch may set
                saves.save(epoch, per_epoch, finished=True,
                           best=validates and run.improve(epoch, result[loss_key]))
                prefix = "val" if validates else "test"
                rec = {"epoch": epoch, "seconds": round(seconds, 4), "train_loss": train_loss,
                       f"{prefix}_loss": result[loss_key]}
                rec.update({f"{prefix}_{k}": v for k, v in result.items() if k != loss_key})
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
                if (ranks.any(interrupted()) if ranks else interrupted()) and run.epoch <= opt.epochs:
                    raise saves.stopped()
                if validates and _stop_early(epoch, opt, run, opt.out is not None, report):
                    break
        if history and validates and "test" in fed:
            final = _test_once(evaluate, fed["test"], run, history[-1]["epoch"], loss_key, report)
            history[-1].update(final)
            if log:
                log.write(json.dumps({"epoch": history[-1]["epoch"], **final}).encode() + b"\n")
    finally:
        if log:
            log.close()
    return history


def _stop_early(epoch: int, opt: TrainOptions, run: RunState, saved: bool,
                report: Callable[[str], None]) -> bool:
    """After an epoch's validation: whether `patience` epochs have passed without a better
    validation loss (run.best: kept across a resume)."""
    if not (opt.patience and run.best and epoch - run.best[0] >= opt.patience):
        return False
    report(f"early stop: no better validation loss for {opt.patience} epochs (best "
           f"{run.best[1]:.4f} at epoch {run.best[0]}{', saved to ' + BEST if saved else ''})")
    return True


def _test_once(evaluate: Evaluator, sources: dict[str, Source], run: RunState, last: int,
               loss_key: str, report: Callable[[str], None]) -> dict[str, float | int]:
    """A run with a validation split evaluates the test split once, at its end: with the best
    params (the lowest validation loss: `test_*`, and `best_epoch`) and, where the last epoch was
    not the best, with the last params too (`last_test_*`). Returns those figures."""
    def figures(prefix: str) -> dict[str, float]:
        return {f"{prefix}{'loss' if k == loss_key else k}": v for k, v in evaluate(sources, "test").items()}

    if run.best is None or run.best_params is None:  # no finite validation loss to choose by
        final = figures("test_")
        report(f"test, last params (epoch {last}; no finite validation loss): {_shown(final)}")
        return final
    best = run.best[0]
    latest = figures("last_test_") if best != last else {}
    live = Rollback(run.params)  # the last params, put back once the best ones are tested
    live.take()
    for k, v in run.best_params.items():
        np.copyto(run.params[k], v)
    chosen = figures("test_")
    live.undo()
    report(f"test, best params (epoch {best}{'' if latest else ', the last'}): {_shown(chosen)}")
    if latest:
        report(f"test, last params (epoch {last}): {_shown(latest)}")
    return {"best_epoch": best, **chosen, **latest}


def _shown(figures: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in figures.items())


@dataclass
class _Checkpoints:
    """Writes the run's checkpoints into `out` (None: nowhere) and words what happened to them."""

    run: RunState
    out: Path | None
    model: str
    scale: dict[str, float]  # each input's declared scaling, saved with the params
    last: tuple[int, int] | None = None  # (epoch, step) of the checkpoint on disk

    def save(self, epoch: int, step: int, finished: bool = False, best: bool = False) -> None:
        """Saves the run, just after `step` of `epoch`, after checking its params (each epoch's end,
        with or without `out`): a NaN behind a finite loss (relu maps NaN to 0) stops the run, and
        never replaces a good checkpoint. A `finished` epoch also writes params.npz (and, if it
        was the `best`, params.best.npz), first: killed before the checkpoint follows, a resume
        redoes the epoch and writes them all again."""
        bad = _nonfinite(self.run.params)
        if bad:
            raise self.nonfinite(f"param {bad} became NaN or Inf", epoch, step)
        if self.out is None:
            return
        if best:
            self.best()
        if finished:
            self.params(epoch)
        self.run.save(self.out)
        self.last = (self.run.epoch, self.run.step)

    def params(self, epoch: int) -> None:
        """Writes the params as they are after `epoch` to params.npz."""
        self._write(PARAMS, self.run.params, {"epoch": epoch})

    def best(self) -> None:
        """Writes the best params so far, if any, to params.best.npz."""
        if self.run.best and self.run.best_params is not None:
            epoch, loss = self.run.best
            self._write(BEST, self.run.best_params, {"epoch": epoch, "val_loss": loss})

    def _write(self, name: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
        if self.out is not None:
            save_arrays(self.out / name, arrays, {"model": self.model, **meta, "scale": self.scale})

    def nonfinite(self, what: str, epoch: int, step: int) -> NonFinite:
        kept = (f"; the last checkpoint, {self.out / CHECKPOINT} (at epoch {self.last[0]}, step "
                f"{self.last[1]}), is good: continue with --resume {self.out}" if self.last and self.out else "")
        return NonFinite(f"{what} at epoch {epoch}, step {step}; training stopped{kept}",
                           hint="try a smaller learning rate, or --on-nonfinite skip to skip such batches")

    def stopped(self) -> TrainingInterrupted:
        where = f"interrupted at epoch {self.run.epoch}, step {self.run.step}"
        if self.out is None:
            return TrainingInterrupted(f"{where}; nothing saved (--out DIR keeps checkpoints)")
        return TrainingInterrupted(f"{where}; checkpoint saved to {self.out / CHECKPOINT}: "
                                   f"continue with --resume {self.out}")

