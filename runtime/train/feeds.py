"""Binds a data set's named arrays to a model's inputs: by name, shape-checked, scaled as declared.

Every input but the learning rate and the schedule's is fed from the array of its name, or of the
name a mapping gives it (`data = "f.npz" { x = "images" }`, `--map x=images`). Images and labels
(`x` and `y` of the bundled sets, IDX and CSV files) also feed an input of another name where the
model's dtypes leave one choice: images the one float input, labels the one i32 input. Nothing is
guessed beyond that: an input no array feeds, or two that one array could feed, is an error naming
them.

Samples keep their values: a float input's data is divided by its declared `pixels(MAX)` (bytes
stay bytes, converted as each batch is fed), i32 inputs (labels, tokens) are never scaled, and
integer data that looks like pixels for a float input that declares no scaling is refused.

Values given directly, as the model reads them (graphc.Model's inputs, graphc grad's --set), are
checked by `checked` with the same rules: the declared shape, finite floats, labels and tokens
non-negative whole numbers within the bound of the ops that read them.

Text (runtime/train/data.py) holds streams of bytes, `x` and `y` (x shifted by one byte), fed by
name like arrays (no roles: both are i32). Each feeds an i32[B, T] input, T a number in the model,
its windows of T bytes: training samples a window at every offset, evaluation the non-overlapping
ones (each byte predicted once). The windows are views of the bytes, never copied out.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Union

import numpy as np

from graphc.autodiff.lr_schedule import INPUTS as SCHEDULE_INPUTS
from graphc.errors import DataError, GraphcError, Loc
from graphc.frontend import Program
from graphc.ir.graph import LR, NP_DTYPES, Graph, Input, Param, TensorType
from graphc.ops import REGISTRY
from graphc.runtime.execute.step import Step
from graphc.runtime.train.data import TEXT_VALIDATION, Dataset, check_finite

# an input's samples as a Feeder takes them: rows of its dtype, or bytes and their divisor
Source = Union[np.ndarray, tuple[np.ndarray, float]]
_ROLES = {"x": "images", "y": "labels"}  # the arrays a role may feed: x a float input, y an i32 one
_INT32_MAX = np.iinfo(np.int32).max


def fed_inputs(g: Graph) -> list[Input]:
    """The inputs data feeds: all but the learning rate, the schedule's and those with a value."""
    return [i for i in g.inputs
            if i.value.name != LR and i.value.name not in SCHEDULE_INPUTS and i.default is None]


def scales(prog: Program) -> dict[str, float]:
    """The declared scaling (`= pixels(MAX)`) of each input that has one, as params.npz stores it."""
    return {i.value.name: i.scale for i in prog.graph.inputs if i.scale is not None}


def bind(prog: Program, g: Graph, arrays: dict[str, np.ndarray], mapping: dict[str, str],
         source: str, split: str, text: bool = False,
         columns: dict[str, str] | None = None) -> dict[str, Source]:
    """The sources of `g`'s fed inputs (g: bound, so its dims are numbers) from `arrays`, named by
    input; `source` and `split` name the data in errors, `columns` the CSV header columns an array
    was read from (Origin.columns). `text`: the arrays are streams of bytes, cut into windows
    ("train" at every offset, other splits without overlap)."""
    declared = {i.value.name: i for i in prog.graph.inputs}
    inputs = fed_inputs(g)
    where = f"{source} ({split} split)"
    columns = columns or {}
    named = {k: k + (f" ({columns[k]})" if k in columns else "") for k in arrays}
    chosen = _resolve(prog, inputs, named, mapping, where, {} if text else _ROLES)
    out: dict[str, Source] = {}
    for inp in inputs:
        name = inp.value.name
        a = arrays[chosen[name]]
        out[name] = (_windows(declared[name], a, where, chosen[name], split == "train") if text
                     else _source(inp, declared[name], a, source, chosen[name], columns.get(chosen[name])))
        if inp.value.dtype == "i32":  # text's bytes are checked as the stream, not window by window
            check_labels(a if text else np.asarray(out[name]), prog.graph, declared[name], source, split)
    if text and len({declared[k].value.shape[1] for k in out}) > 1:
        shown = " and ".join(f"{k} is {declared[k].value.type}" for k in out)
        raise DataError(f"{where}: {shown}: a language model's inputs are windows of one length T "
                        "(y being x shifted by one byte)", declared[next(iter(out))].loc)
    return out


def bind_split(prog: Program, g: Graph, data: Dataset, split: str,
               mapping: dict[str, str]) -> dict[str, Source]:
    """bind() for split `split` of `data`, its errors naming where that split was read."""
    origin = data.origin(split)
    return bind(prog, g, data.splits()[split], mapping, origin.name, split, data.text, origin.columns)


def feeder(step: Step, sources: dict[str, Source]) -> Callable[[np.ndarray], None]:
    """Fills `step`'s inputs with the samples a batch's indices pick: the generated feed (one native
    call) where every source is rows it reads (C-contiguous), else NumPy (text's windows, views of
    its bytes: a batch of them is a few KB)."""
    if all(isinstance(s, tuple) or s.flags.c_contiguous for s in sources.values()):
        return step.feeder(**sources)

    def feed(idx: np.ndarray) -> None:
        for name, src in sources.items():
            dst = step.inputs[name]
            np.copyto(dst, _pick(src, dst.dtype, idx), casting="same_kind")
    return feed


def rows(source: Source, dtype: str, start: int, stop: int) -> np.ndarray:
    """Samples start:stop of a source, in the input's dtype (bytes divided as the feed does)."""
    return _pick(source, np.dtype(NP_DTYPES[dtype]), slice(start, stop))


def _pick(source: Source, dtype: np.dtype, index: slice | np.ndarray) -> np.ndarray:
    """The samples `index` picks from a source; bytes with a divisor become `dtype`, divided."""
    if isinstance(source, tuple):
        raw, divisor = source
        return np.divide(raw[index], divisor, dtype=dtype)  # float32(byte) / divisor
    return source[index]


def samples(sources: Mapping[str, Source]) -> int:
    """The number of samples the sources hold (the same in each: the loader checks it)."""
    first = next(iter(sources.values()))
    return len(first[0] if isinstance(first, tuple) else first)


def _resolve(prog: Program, inputs: list[Input], named: dict[str, str], mapping: dict[str, str],
             where: str, roles: dict[str, str]) -> dict[str, str]:
    """The array that feeds each input: by name or mapping, then by dtype the arrays `roles` names
    (images and labels). `named`: each array's name as messages show it (with its CSV columns)."""
    keys = list(named)
    names = [i.value.name for i in fed_inputs(prog.graph)]  # a mapping may name a label predict skips
    for name, key in mapping.items():
        if name not in names:
            raise GraphcError(f"data mapping {name} = \"{key}\": the model has no input {name} that "
                              f"data feeds (its inputs: {', '.join(names)})", prog.train.locs.get(f"data.{name}"))
    chosen = {}
    for inp in inputs:
        name = inp.value.name
        key = mapping.get(name, name)
        if key in keys:
            chosen[name] = key
        elif name in mapping:
            raise DataError(f"{where}: no array '{key}' to feed input {name} (arrays: {', '.join(named.values())})",
                            prog.train.locs.get(f"data.{name}"))
    for key, role in roles.items():
        if key not in keys or key in chosen.values():
            continue
        fits = [i for i in inputs if i.value.name not in chosen and (i.value.type.is_float) == (key == "x")]
        if len(fits) > 1:
            a, b = (i.value.name for i in fits[:2])
            raise DataError(f"{where}: its {role} ('{key}') could feed input {a} or input {b}; "
                            f"map each input to an array", fits[1].loc,
                            hint=f"data = \"...\" {{ {a} = \"{key}\" }} in the train block, or --map {a}={key}")
        if fits:
            chosen[fits[0].value.name] = key
    declared = {i.value.name: i.value.type for i in prog.graph.inputs}
    for inp in inputs:
        name = inp.value.name
        if name not in chosen:
            raise DataError(f"{where}: no array feeds input {name} ({declared[name]}); it holds "
                            f"{', '.join(named.values())}", inp.loc,
                            hint=f"name an array {name}, or map one: data = \"...\" {{ {name} = \"ARRAY\" }} "
                                 f"in the train block, or --map {name}=ARRAY")
    return chosen


def _source(inp: Input, declared: Input, a: np.ndarray, source: str, key: str,
            columns: str | None) -> Source:
    """One input's samples from array `key` (read from CSV `columns`, if named): shape fitted,
    checked and converted (scaled if declared)."""
    what = f"{source}: array '{key}'" + (f" ({columns})" if columns else "")
    a = _fit_shape(inp, declared.loc, a, what)
    name, t = inp.value.name, inp.value.type
    integer = a.dtype.kind in "biu"
    if inp.value.dtype == "i32":
        bad = _not_index(a)
        if bad is not None:
            raise DataError(f"{what} holds {a.reshape(-1)[bad].item()!r} (sample "
                            f"{bad // max(1, math.prod(a.shape[1:]))}) but input {name} is {t}: labels "
                            "and tokens are non-negative whole numbers", declared.loc)
        return np.ascontiguousarray(a, np.int32)
    low, high = (float(a.min()), float(a.max())) if integer and a.size else (0.0, 0.0)
    if declared.scale is not None:
        if integer and low >= 0 and high <= 255:  # kept as bytes: the feed divides each batch
            return np.ascontiguousarray(a, np.uint8), declared.scale
        a = a / declared.scale
    elif integer and low >= 0 and 1 < high <= 255:
        raise DataError(f"{what} holds integers in [0, {high:g}] (pixels?) for input {name} "
                        f"({declared.value.type}), "
                        f"which declares no scaling", declared.loc,
                        hint=f"declare how its data is scaled: input {name} : {declared.value.type} = pixels(255) "
                             "(or store floats as the model should read them)")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(a, NP_DTYPES[inp.value.dtype])
    if np.isfinite(a).all():  # the loaders refuse NaN and Inf; here, numbers the dtype cannot hold
        check_finite(source, a, out, lambda i: f"{key}[{', '.join(map(str, i))}]")
    return out


def checked(model: Graph, leaf: Input | Param, given: np.ndarray | float, what: str,
            split: str = "batch", samples: bool = False) -> np.ndarray:
    """A value given for `leaf`, an input or param of a bound graph of `model`, as the leaf takes
    it: of its shape (a number fills it; `samples`: any number of samples of its per-sample shape),
    finite numbers for a float, non-negative whole numbers for an i32, each below the bound the
    ops reading that input declare; converted to its dtype. Values as the model reads them, never
    scaled (graphc.Model's inputs, graphc grad's --set). `what` names the value in messages, which
    point at the leaf's declaration; `split` names the samples."""
    a, v = np.asarray(given), leaf.value
    want = (len(a),) + tuple(v.dims[1:]) if samples and a.ndim else tuple(v.dims)
    if a.shape != want and (a.ndim or samples):
        raise DataError(f"{what} is {v.type}, given shape [{', '.join(map(str, a.shape))}]", leaf.loc)
    if a.dtype.kind not in "biuf":
        raise DataError(f"{what} is {v.type}: give numbers (got {a.dtype})", leaf.loc)
    if v.dtype == "i32":
        bad = _not_index(a)
        if bad is not None:
            raise DataError(f"{what} is {v.type}: give non-negative whole numbers (got "
                            f"{a.reshape(-1)[bad].item()!r})", leaf.loc)
        a = a.astype(np.int64, copy=False)  # whole: a label shows as 3, not 3.0
        declared = next((i for i in model.inputs if i.value.name == v.name), None)
        if declared:
            check_labels(a, model, declared, what, split)
    elif not np.isfinite(a).all():
        raise DataError(f"{what} is {v.type}: give finite numbers (got NaN or Inf)", leaf.loc)
    return np.broadcast_to(a, want).astype(NP_DTYPES[v.dtype], copy=False)


def _not_index(a: np.ndarray) -> int | None:
    """The flat position of the first element of `a` that is no label, token or index (those are
    non-negative whole numbers that int32 holds), if any."""
    flat = a.reshape(-1)
    fits = (flat >= 0) & (flat <= _INT32_MAX)
    if a.dtype.kind == "f":
        fits &= flat == np.floor(flat)
    bad = np.flatnonzero(~fits)
    return int(bad[0]) if bad.size else None


def _windows(declared: Input, stream: np.ndarray, where: str, key: str, overlap: bool) -> np.ndarray:
    """Input `declared`'s samples from stream `key`: its windows of T bytes, T fixed by the input's
    type i32[B, T]; a window at every offset (`overlap`), or at every T-th."""
    name, t = declared.value.name, declared.value.type
    length = window_length(t)
    if length is None:
        raise DataError(f"{where}: text feeds input {name} windows of bytes, but it is {t}: a language "
                        "model's inputs are i32[B, T], T a number (the window's bytes)", declared.loc,
                        hint=f"input {name} : i32[B, 64]")
    if len(stream) < length:
        raise DataError(f"{where}: {len(stream) + 1} bytes of text, fewer than one window of T + 1 = "
                        f"{length + 1} bytes (input {name} is {t}; the text's last "
                        f"{TEXT_VALIDATION:.0%} validates)", declared.loc)
    windows = np.lib.stride_tricks.sliding_window_view(stream, length)
    return windows if overlap else windows[::length]


def window_length(t: TensorType) -> int | None:
    """T, for an input declared i32[B, T] with T a number: one that takes windows of T bytes."""
    return t.shape[1] if t.dtype == "i32" and t.rank == 2 and isinstance(t.shape[1], int) else None


def _fit_shape(inp: Input, loc: Loc | None, a: np.ndarray, what: str) -> np.ndarray:
    """`a` with the input's per-sample shape: as it is, flattened to a 1-D input, or with axes of
    size 1 added or removed; never with its axes reordered."""
    want = tuple(int(d) for d in inp.value.dims[1:])
    got = a.shape[1:]
    if got == want or (len(want) == 1 and math.prod(got) == want[0]) or \
            [d for d in got if d != 1] == [d for d in want if d != 1]:
        return a.reshape((len(a),) + want)
    message = (f"{what} holds samples of shape {list(got)} but input {inp.value.name} "
               f"takes {list(want)} per sample")
    if sorted(got) == sorted(want):
        raise DataError(message + ": the same sizes in another order (channels-last NHWC data for a "
                        "channels-first NCHW input?); graphc never reorders axes", loc,
                        hint="transpose the array, e.g. np.transpose(images, (0, 3, 1, 2))")
    raise DataError(message, loc)


def check_labels(y: np.ndarray, g: Graph, yin: Input, source: str, split: str) -> None:
    """Every label or token must be below the bound each op that reads it declares for it (an index
    into the logits' last axis, below onehot's n)."""
    flat = y.reshape(-1)
    per = max(1, math.prod(y.shape[1:]))
    for n in g.nodes:
        indices = REGISTRY[n.op].indices
        bounds = indices([x.type for x in n.inputs], n.attrs) if indices else {}
        for i, classes in bounds.items():
            if n.inputs[i] is not yin.value or not isinstance(classes, int):
                continue
            bad = np.flatnonzero(flat >= classes)
            if len(bad):
                named = {"train": "training ", "": ""}.get(split, split + " ")
                raise DataError(f"{source}: label {flat[bad[0]]} of {named}sample "
                                f"{bad[0] // per} is out of range: {n.op} here takes {classes} classes "
                                f"(labels 0..{classes - 1})", n.loc)
