"""Predictions: the model's outputs for every sample of some data, computed in batches.

`predict(prog, params, arrays)` runs the inference graph (graphc.autodiff.graphs.inference_graph:
the model's `output`s, else the prediction its loss reads) in the evaluation form on named arrays,
fed as training feeds them (runtime/train/feeds.py: by name, shapes checked, the declared scaling
applied); labels are not needed. Its Predictor, which compiles that graph per batch size and runs
it over any number of samples, also serves graphc.Model.predict (values as the model reads them).
`write_predictions` saves the result as .npy, .npz or .csv.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

from graphc.autodiff.graphs import inference_graph
from graphc.driver import Compiled, batch_dim, compile_graph, forward
from graphc.errors import DataError, GraphcError
from graphc.frontend import Program
from graphc.runtime.train.data import Origin
from graphc.runtime.train.feeds import Source, bind, rows, samples

BATCH = 1000  # samples per native call where the model's batch is not fixed
_PROGRESS = 20  # batches from which a progress bar is shown (on a terminal)


class Predictor:
    """A model's inference graph (its `output`s, else the prediction its loss reads; the evaluation
    form) compiled at each batch size it runs at, all of them reading `params`: what `graphc
    predict` and graphc.Model.predict run."""

    def __init__(self, prog: Program, params: dict[str, np.ndarray], threads: int | None = None) -> None:
        self.prog, self.params, self.threads = prog, params, threads
        self.compiled: dict[int, Compiled] = {}
        self.graph = inference_graph(forward(prog, 1, training=False))  # what it reads, per sample
        if not self.graph.inputs:
            raise GraphcError(f"model {prog.graph.name}'s prediction reads no input: there is nothing to feed")
        scalar = next((i for i in self.graph.inputs if not i.value.shape), None)
        if scalar:
            raise GraphcError(f"input {scalar.value.name} is a scalar ({scalar.value.type}): prediction "
                              "runs on samples, [N, ...] (graphc grad evaluates a scalar graph)", scalar.loc)
        # the batch of a model whose inputs lead with a number, not a dim
        self.fixed = None if batch_dim(prog.graph) else int(self.graph.inputs[0].value.shape[0])

    def at(self, n: int) -> Compiled:
        """The graph compiled for batches of `n` samples."""
        if n not in self.compiled:
            self.compiled[n] = compile_graph(inference_graph(forward(self.prog, n, training=False)),
                                             self.params, threads=self.threads)
        return self.compiled[n]

    def __call__(self, sources: Mapping[str, Source], batch: int,
                 progress: bool | None = None) -> dict[str, np.ndarray]:
        """Each output for every sample of `sources` (each input's samples, as bind() gives them),
        [N, ...], in batches of `batch`, the rest in one smaller batch; a fixed batch runs at its
        size, the last one padded with copies of its last sample (their outputs are dropped).
        `progress`: a bar on stderr (None: when stderr is a terminal and there are many batches)."""
        n = samples(sources)
        batch = self.fixed or min(batch, n)
        types = {i.value.name: i.value.dtype for i in self.graph.inputs}
        outs: dict[str, list[np.ndarray]] = {}
        count = -(-n // batch)
        show = sys.stderr.isatty() and count >= _PROGRESS if progress is None else progress
        for s in tqdm(range(0, n, batch), desc="predict", unit="batch", total=count, leave=False,
                      disable=not show, file=sys.stderr):
            e = min(s + batch, n)
            feeds = {k: rows(src, types[k], s, e) for k, src in sources.items()}
            size = self.fixed or e - s
            if size > e - s:  # pad a fixed batch with its last sample
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], size - (e - s), axis=0)])
                         for k, v in feeds.items()}
            for k, v in self.at(size).step.run(**feeds).items():
                if v.ndim == 0 or v.shape[0] != size:
                    raise GraphcError(f"output {k} ({self.at(size).schedule.graph.outputs[k].type}) does "
                                      "not hold one row per sample, so it cannot be predicted sample by sample")
                outs.setdefault(k, []).append(v[: e - s].copy())
        return {k: np.concatenate(v) for k, v in outs.items()}


def predict(prog: Program, params: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
            mapping: dict[str, str] | None = None, origin: Origin | None = None,
            progress: bool | None = None, threads: int | None = None) -> dict[str, np.ndarray]:
    """Each output of the inference graph for every sample of `arrays` (raw, by input name or
    `mapping`; read from `origin`, which messages name), [N, ...], fed as training feeds them:
    shapes checked, the declared scaling applied. In batches of BATCH (Predictor)."""
    origin = origin or Origin("data")
    predictor = Predictor(prog, params, threads)
    sources = bind(prog, predictor.graph, arrays, mapping or {}, origin.name, "predict",
                   columns=origin.columns)
    return predictor(sources, BATCH, progress)


def write_predictions(path: Path, outputs: dict[str, np.ndarray]) -> str:
    """Saves predictions: .npz (an array per output), .npy (the one output) or .csv (a row per
    sample, a column per output value, headed NAME or NAME[i, ...]). Returns what was written."""
    kind = path.suffix.lower()
    if kind not in (".npy", ".npz", ".csv"):
        raise GraphcError(f"-o {path}: write predictions to a .npy, .npz or .csv file")
    if kind == ".npy" and len(outputs) > 1:
        raise GraphcError(f"-o {path}: the model has {len(outputs)} outputs ({', '.join(outputs)}); "
                          "a .npy file holds one: write a .npz")
    try:
        if kind == ".npz":
            np.savez(path, **outputs)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        elif kind == ".npy":
            np.save(path, next(iter(outputs.values())))
        else:
            header, columns = [], []
            for k, v in outputs.items():
                flat = v.reshape(len(v), -1)
                columns.append(flat)
                header += [k] if v.ndim == 1 else [f"{k}[{', '.join(map(str, i))}]" for i in np.ndindex(v.shape[1:])]
            np.savetxt(path, np.concatenate(columns, axis=1), delimiter=",", fmt="%.9g",
                       header=",".join(f'"{h}"' if "," in h else h for h in header), comments="")
    except OSError as e:
        raise DataError(f"-o {path}: cannot write it ({e.strerror or e})") from None
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items())
    return f"wrote {path}: {shapes}"
