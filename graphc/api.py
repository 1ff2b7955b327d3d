"""The Python API: a compiled model to train, differentiate and run from Python.

`graphc.load("models/mlp.net")` gives a Model: its params as NumPy arrays, and the compiled graphs
that share them: the training step (`step`, one native call), the gradient graph (`grad`), the
inference graph (`predict`, graphc predict's runner) and the CLI's trainer (`fit`, which runs the
same training step as `step`, optimizer state and all). Each graph is compiled on first use
(and cached on disk, as the CLI's are). Errors are GraphcError, positioned in the model file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from graphc.autodiff.graphs import gradient_graph
from graphc.driver import Compiled, compile_graph, forward, train_graph
from graphc.errors import DataError, GraphcError
from graphc.frontend import Program
from graphc.ir.graph import LR, Graph
from graphc import driver
from graphc.runtime.train.checkpoint import load_params, save_arrays
from graphc.runtime.train.data import Dataset, load_dataset
from graphc.runtime.train.feeds import checked
from graphc.runtime.train.predict import Predictor
from graphc.runtime.train.trainer import TrainingStep, TrainOptions, model_arrays, train

__all__ = ["Model", "load", "learning_rate"]


def load(path: str | os.PathLike, batch: int | None = None, seed: int | None = None,
         threads: int | None = None) -> Model:
    """Parse and check the model file at `path`; its graphs are compiled on first use.

    `batch` (default: the train block's) is the samples of one step and of grad; `seed` (default:
    the train block's) draws the initial params; `threads` (default: all cores) run large kernels."""
    return Model(driver.load(path), batch, seed, threads)


def learning_rate(prog: Program, lr: float | None = None) -> float:
    """`lr` if given, else the learning rate of the train block's optimizer."""
    if lr is None:
        lr = prog.train.opt_args.get("lr")
    if lr is None:
        raise GraphcError("no learning rate: set lr in the train block's optimizer or pass --lr",
                          prog.train.locs.get("train"))
    if not (math.isfinite(lr) and lr > 0):
        raise GraphcError(f"the learning rate must be a positive number, got {lr}")
    return float(lr)


class Model:
    """A model file's params and its compiled graphs, which all read and write the same arrays."""

    def __init__(self, program: Program, batch: int | None = None, seed: int | None = None,
                 threads: int | None = None) -> None:
        self.program = program
        self.batch = batch or program.train.batch
        self.threads = threads
        self._train_graph = train_graph(program, self.batch)  # checks the model can be trained
        #: the params and the model's state (batch norm's running statistics) by name, as
        #: params.npz holds them: the arrays the compiled graphs read and update in place
        self.params: dict[str, np.ndarray] = model_arrays(
            program, self._train_graph, program.train.seed if seed is None else seed)
        self._compiled: dict[str, Compiled] = {}
        self._predictor: Predictor | None = None  # the inference graph, compiled per batch size

    @property
    def name(self) -> str:
        """The model's name (its `net` line)."""
        return self.program.graph.name

    def __repr__(self) -> str:
        count = sum(math.prod(p.value.dims) for p in self._train_graph.params)
        return f"<graphc.Model {self.name}: {count} params, batch {self.batch}>"

    def step(self, lr: float | None = None, **inputs: np.ndarray | float) -> dict[str, float | np.ndarray]:
        """One training step on a batch (forward, backward, update: one native call): each input
        by name with the shape the model gives it at this batch. Returns the loss and metrics as
        floats (and any other output the model declares, as an array); the params are updated in
        place. `lr` defaults to the train block's."""
        out = self._run(self._training_step().compiled, {LR: learning_rate(self.program, lr), **inputs})
        return {k: float(v) if v.ndim == 0 else v.copy() for k, v in out.items()}

    def grad(self, **inputs: np.ndarray | float) -> dict[str, np.ndarray | float]:
        """The loss, metrics and gradients on a batch, without an update: `d.NAME` for each param
        and float input (copies), the scalars as floats. State is read, not updated."""
        compiled = self._compile("grad", lambda: gradient_graph(forward(self.program, self.batch)))
        out = self._run(compiled, inputs)
        return {k: float(v) if v.ndim == 0 else v.copy() for k, v in out.items()}

    def predict(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The model's outputs (its `output`s, else the prediction its loss reads) for any number
        of samples, computed in batches of `batch` by the evaluation form (no dropout, batch norm
        on its running statistics); a model with a fixed batch pads its last one. Inputs the
        prediction does not read (labels) may be left out."""
        if self._predictor is None:
            self._predictor = Predictor(self.program, self.params, self.threads)
        g = self._predictor.graph
        model_inputs = _names(self.program.graph)
        arrays = {k: np.asarray(v) for k, v in inputs.items()
                  if k in _names(g) or k not in model_inputs}  # labels are not read: dropped
        return self._predictor(self._feeds(g, arrays, samples=True), self.batch)

    def fit(self, data: str | os.PathLike | Dataset, epochs: int | None = None,
            lr: float | None = None, seed: int | None = None, log: str | os.PathLike | None = None,
            out: str | os.PathLike | None = None, progress: bool = True,
            callbacks: Iterable[Callable[[dict], None]] = (),
            report: Callable[[str], None] = print) -> list[dict]:
        """Train with `graphc train`'s trainer (shuffled epochs, or the train block's
        steps_per_epoch; evaluation on the test split, or the validation split the train block
        asks for; `log` as JSON lines, checkpoints and params.npz into `out`) on the same compiled
        step as `step`: these params and the optimizer's state carry on from it and into it.
        `data` is a Dataset or what `--data` takes (split and mapped as the train block says); each
        callback is called with each epoch's record (epoch, train_loss, test_loss, test metrics).
        Returns the records."""
        t = self.program.train
        args = {k: v for k, v in t.opt_args.items() if k != LR}  # lr is the step's input
        opts = TrainOptions(epochs=epochs or t.epochs, batch=self.batch,
                            lr=learning_rate(self.program, lr), seed=t.seed if seed is None else seed,
                            optimizer=t.optimizer, opt_args=args, log=Path(log) if log else None,
                            out=Path(out) if out else None, progress=progress, threads=self.threads,
                            step=self._training_step(), callbacks=tuple(callbacks),
                            data_map=t.data_map, patience=t.patience, steps_per_epoch=t.steps_per_epoch)
        dataset = data if isinstance(data, Dataset) else load_dataset(data, t.validation, t.test)
        return train(self.program, dataset, opts, report)

    def save(self, path: str | os.PathLike) -> None:
        """Write the params to an .npz file (atomically, no pickle), as `graphc train --out` does."""
        save_arrays(path, self.params, {"model": self.name})

    def load_params(self, path: str | os.PathLike) -> None:
        """Read every param from a params.npz or checkpoint.npz (shapes checked, floats converted
        to the param's dtype) into this model's arrays, in place."""
        g = self.program.graph
        for k, v in load_params(path, g.params + g.state).items():
            self.params[k][...] = v

    def _training_step(self) -> TrainingStep:
        """The one compiled training step `step` and `fit` both run (and its optimizer state)."""
        return TrainingStep(self._train_graph, self._compile("step", lambda: self._train_graph), self.params)

    def _compile(self, key: str, build: Callable[[], Graph]) -> Compiled:
        if key not in self._compiled:
            self._compiled[key] = compile_graph(build(), self.params, threads=self.threads)
        return self._compiled[key]

    def _run(self, compiled: Compiled, feeds: dict[str, np.ndarray | float]) -> dict[str, np.ndarray]:
        """Check `feeds` against the graph's inputs and run it."""
        return compiled.step.run(**self._feeds(compiled.schedule.graph, feeds))

    def _feeds(self, g: Graph, feeds: Mapping[str, np.ndarray | float],
               samples: bool = False) -> dict[str, np.ndarray]:
        """`feeds` checked against g's inputs (names, shapes, dtypes, labels): a batch of each, or
        any number of `samples`, the same for each input. Errors are shown with the model file's
        line and a caret, as the CLI shows them."""
        try:
            unknown = [k for k in feeds if k not in _names(g) and k != LR]
            if unknown:
                raise GraphcError(f"model {self.name} has no input {unknown[0]} here (its inputs: "
                                  f"{', '.join(_names(g))})")
            if samples:
                self._samples(g, feeds)
            out = {}
            for inp in g.inputs:
                name = inp.value.name
                if name not in feeds:
                    if inp.default is not None:
                        continue
                    raise GraphcError(f"input {name} ({inp.value.type}) is not given", inp.loc)
                out[name] = checked(self.program.graph, inp, feeds[name], f"input {name}",
                                    "predict" if samples else "batch", samples)
            return out
        except GraphcError as e:
            raise e.with_source(self.program.source) from None

    def _samples(self, g: Graph, inputs: Mapping[str, np.ndarray | float]) -> None:
        """Checks that `inputs` hold samples, the same number for each of g's inputs."""
        lengths = {k: np.shape(v)[0] if np.ndim(v) else -1 for k, v in inputs.items() if k in _names(g)}
        if not lengths or min(lengths.values()) < 0 or len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k}: {n if n >= 0 else 'a scalar'}" for k, n in lengths.items())
            raise DataError(f"predict takes arrays of samples, the same number for each input "
                            f"({', '.join(_names(g))}); got {shown or 'none'}")


def _names(g: Graph) -> list[str]:
    return [i.value.name for i in g.inputs if i.value.name != LR]

