"""Predictions: the model's outputs for every sample of some data, computed in batches.

`predict(prog, params, arrays)` runs the inference graph (graphc.autodiff.graphs.inference_graph:
the model's `output`s, else the prediction its loss reads) in the evaluation form on named arrays,
fed as training feeds them (runtime/train/feeds.py: by name, shapes checked, the declared scaling
applied); labels are not needed. `write_predictions` saves the result as .npy, .npz or .csv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from graphc.autodiff.graphs import inference_graph
from graphc.driver import Compiled, batch_dim, compile_graph, forward
from graphc.errors import DataError, GraphcError
from graphc.frontend import Program
from graphc.runtime.train.data import Origin
from graphc.runtime.train.feeds import bind, rows, samples

BATCH = 1000  # samples per native call where the model's batch is not fixed
_PROGRESS = 20  # batches from which a progress bar is shown (on a terminal)


def predict(prog: Program, params: dict[str, np.ndarray], arrays: dict[str, np.ndarray],
            mapping: dict[str, str] | None = None, origin: Origin | None = None,
            progress: bool | None = None, threads: int | None = None) -> dict[str, np.ndarray]:
    """Each output of the inference graph for every sample of `arrays` (raw, by input name or
    `mapping`; read from `origin`, which messages name), [N, ...]. A model with a fixed batch runs in batches of that size, the last one
    padded with copies of its last sample (their outputs are dropped). `progress`: a bar on stderr
    (None: when stderr is a terminal and there are many batches)."""
    fixed = batch_dim(prog.graph) is None
    compiled: dict[int, Compiled] = {}

    def step(n: int) -> Compiled:
        if n not in compiled:
            compiled[n] = compile_graph(inference_graph(forward(prog, n, training=False)), params,
                                        threads=threads)
        return compiled[n]

    first = step(prog.train.batch if fixed else 1).schedule.graph
    if not first.inputs:
        raise GraphcError(f"model {prog.graph.name}'s prediction reads no input: there is nothing to feed")
    origin = origin or Origin("data")
    sources = bind(prog, first, arrays, mapping or {}, origin.name, "predict", columns=origin.columns)
    n = samples(sources)
    batch = int(first.inputs[0].value.shape[0]) if fixed else min(BATCH, n)
    types = {i.value.name: i.value.dtype for i in first.inputs}
    outs: dict[str, list[np.ndarray]] = {}
    count = -(-n // batch)
    show = sys.stderr.isatty() and count >= _PROGRESS if progress is None else progress
    for s in tqdm(range(0, n, batch), desc="predict", unit="batch", total=count, leave=False,
                  disable=not show, file=sys.stderr):
        e = min(s + batch, n)
        feeds = {k: rows(src, types[k], s, e) for k, src in sources.items()}
        size = batch if fixed else e - s
        if size > e - s:  # pad a fixed batch with its last sample
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], size - (e - s), axis=0)]) for k, v in feeds.items()}
        for k, v in step(size).step.run(**feeds).items():
            if v.ndim == 0 or v.shape[0] != size:
                raise GraphcError(f"output {k} ({step(size).schedule.graph.outputs[k].type}) does not "
                                  "hold one row per sample, so it cannot be predicted sample by sample")
            outs.setdefault(k, []).append(v[: e - s].copy())
    return {k: np.concatenate(v) for k, v in outs.items()}


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
