"""The `train { ... }` block: read into a TrainConfig and validated with positioned errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from graphc.autodiff.optim import OPTIMIZERS
from graphc.autodiff.lr_schedule import DURATIONS, EPOCHS, SCHEDULES
from graphc.errors import GraphcError, Loc
from graphc.frontend import ast

KEYS = ("optimizer", "schedule", "clip_norm", "batch", "epochs", "steps_per_epoch", "seed", "data",
        "validation", "test", "patience")


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    opt_args: dict[str, float] = field(default_factory=dict)  # only the arguments written
    schedule: str = "constant"
    schedule_args: dict[str, float] = field(default_factory=dict)  # only the arguments written
    clip_norm: float | None = None  # clip the gradients to this global norm
    batch: int = 32
    epochs: int = 1
    # an epoch of this many steps, each drawing its batch at random; None: a shuffled pass over the
    # samples (text: the trainer's default)
    steps_per_epoch: int | None = None
    seed: int = 0
    data: str | None = None  # a bundled name (mnist, digits, jargon) or a path
    # `data = "f.npz" { x = "images" }`: the array that feeds each input whose name differs
    data_map: dict[str, str] = field(default_factory=dict)
    validation: float | str | None = None  # a fraction of the training samples, or a file
    test: float | str | None = None  # likewise (default: a fixed 20% of arrays that name no split)
    patience: int | None = None  # stop after this many epochs without a better validation loss
    # where each setting was written: "batch", "data", ..., "optimizer.lr", "schedule.warmup";
    # "train" is the block
    locs: dict[str, Loc] = field(default_factory=dict)


def did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """A hint naming the closest known word, if one is close."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def train_config(module: ast.Module, base: Path | None = None) -> TrainConfig:
    """The module's train block as a TrainConfig (defaults when there is none).

    A quoted `data` path is taken relative to `base` (the .net file's folder) when given.
    """
    blocks = [s for s in module.stmts if isinstance(s, ast.Train)]
    cfg = TrainConfig()
    if not blocks:
        return cfg
    if len(blocks) > 1:
        raise GraphcError(f"a second train block (the first is at line {blocks[0].loc.line})",
                          blocks[1].loc)
    cfg.locs["train"] = blocks[0].loc
    for entry in blocks[0].entries:
        if entry.key in cfg.locs:
            raise GraphcError(f"train key '{entry.key}' is given twice", entry.loc)
        if entry.key not in KEYS:
            raise GraphcError(f"unknown train key '{entry.key}'", entry.loc, hint=_key_hint(entry.key))
        cfg.locs[entry.key] = entry.value.loc
        if entry.mapping is not None and entry.key != "data":
            raise GraphcError(f"only data takes a {{ input = \"array\" }} mapping, not {entry.key}",
                              entry.mapping[0][2] if entry.mapping else entry.loc)
        if entry.key == "optimizer":
            _optimizer(entry.value, cfg)
        elif entry.key == "schedule":
            _schedule(entry.value, cfg)
        elif entry.key == "clip_norm":
            cfg.clip_norm = _positive("clip_norm", entry.value)
        elif entry.key == "data":
            cfg.data = _data(entry.value, base)
            for name, array, loc in entry.mapping or ():
                if name in cfg.data_map:
                    raise GraphcError(f"input {name} is mapped twice", loc)
                cfg.data_map[name] = array
                cfg.locs[f"data.{name}"] = loc
        elif entry.key in ("validation", "test"):
            setattr(cfg, entry.key, _held_out(entry.key, entry.value, base))
        else:
            least = 0 if entry.key == "seed" else 1
            setattr(cfg, entry.key, _whole(entry.key, entry.value, least))
    return cfg


def _whole(key: str, e: ast.Expr, least: int) -> int:
    v = ast.literal(e)
    if not isinstance(v, int) or isinstance(v, bool) or v < least:
        what = "a positive" if least == 1 else "a non-negative"
        got = f", got {v}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
        raise GraphcError(f"{key} must be {what} whole number{got}", e.loc)
    return v


def _key_hint(key: str) -> str:
    """Where an unknown train key probably belongs."""
    for what, table in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        owner = next((name for name, args in table.items() if key in args), None)
        if owner:
            return f"{what} arguments go inside the call: {what} = {owner}({key}=...)"
    return did_you_mean(key, KEYS) or f"keys: {', '.join(KEYS)}"


def _positive(key: str, e: ast.Expr) -> float:
    v = ast.literal(e)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
        raise GraphcError(f"{key} must be a positive number", e.loc)
    return float(v)


def _call(e: ast.Expr, key: str, table: dict[str, dict[str, float | None]], example: str,
          cfg: TrainConfig) -> tuple[str, dict[str, float], ast.Call]:
    """A `NAME(arg=number, ...)` entry checked against `table` (name -> {argument: default}): the
    name, the arguments written (booleans as 1.0 / 0.0; positions in cfg.locs as "KEY.ARG") and
    the call expression."""
    if isinstance(e, ast.Name):  # `optimizer = adam`: no arguments
        e = ast.Call(e.id, [], None, e.loc)
    if not isinstance(e, ast.Call) or e.scope is not None:
        raise GraphcError(f"{key} must be a call such as {example}", e.loc)
    if e.func not in table:
        hint = did_you_mean(e.func, list(table)) or f"{key}s: {', '.join(table)}"
        raise GraphcError(f"unknown {key} '{e.func}'", e.loc, hint=hint)
    known = table[e.func]
    if e.positional:
        first = next(iter(known), "arg")
        raise GraphcError(f"{e.func} takes keyword arguments, e.g. {e.func}({first}=...)", e.positional[0].loc)
    args: dict[str, float] = {}
    for kw in e.kwargs:
        if kw.name not in known:
            raise GraphcError(f"{e.func} has no argument '{kw.name}'", kw.loc,
                              hint=did_you_mean(kw.name, list(known)) or f"arguments: {', '.join(known)}")
        if kw.name in args:
            raise GraphcError(f"argument '{kw.name}' is given twice", kw.loc)
        v = ast.literal(kw.value)
        if v is None:
            raise GraphcError(f"{e.func}({kw.name}=...) must be a number or true/false", kw.value.loc)
        args[kw.name] = float(v)
        cfg.locs[f"{key}.{kw.name}"] = kw.value.loc
    return e.func, args, e


def _optimizer(e: ast.Expr, cfg: TrainConfig) -> None:
    cfg.optimizer, cfg.opt_args, e = _call(e, "optimizer", OPTIMIZERS, "sgd(lr=0.1)", cfg)
    if "lr" not in cfg.opt_args:
        raise GraphcError(f"{e.func} needs a learning rate", e.loc, hint=f"write {e.func}(lr=0.1, ...)")
    if cfg.opt_args["lr"] <= 0:
        raise GraphcError(f"lr must be positive, got {cfg.opt_args['lr']:g}", cfg.locs["optimizer.lr"])


def _schedule(e: ast.Expr, cfg: TrainConfig) -> None:
    cfg.schedule, args, e = _call(e, "schedule", SCHEDULES, "cosine(warmup=100)", cfg)
    known = SCHEDULES[cfg.schedule]
    for key in (k for k in DURATIONS if k in known):
        forms = [k for k in (key, key + EPOCHS) if k in args]
        if len(forms) == 2:
            raise GraphcError(f"give {key} in steps or in epochs, not both", cfg.locs[f"schedule.{forms[1]}"])
        if not forms and key != "warmup":
            raise GraphcError(f"{cfg.schedule} needs {key}=STEPS or {key}{EPOCHS}=EPOCHS", e.loc,
                              hint=f"write {cfg.schedule}({key}{EPOCHS}=2, ...)")
    for name, v in args.items():
        problem = _schedule_arg_problem(name, v)
        if problem:
            raise GraphcError(f"{name} must be {problem}, got {v:g}", cfg.locs[f"schedule.{name}"])
    cfg.schedule_args = args


def _schedule_arg_problem(name: str, v: float) -> str | None:
    """What a schedule argument's value must be, when `v` is not that."""
    if name in DURATIONS and (v != int(v) or v < 0):
        return "a whole number of steps"
    if name == "every" and v < 1 or name in ("every" + EPOCHS, "gamma") and v <= 0:
        return "positive"
    if name == "warmup" + EPOCHS and v < 0:
        return "non-negative"
    if name == "final" and not 0 <= v <= 1:
        return "between 0 and 1 (a fraction of lr)"
    return None


def _held_out(key: str, e: ast.Expr, base: Path | None) -> float | str:
    """A split (`key`: validation, test): the fraction in (0, 1) of the samples held out for it, or
    a quoted file of its samples."""
    if isinstance(e, ast.Str):
        return _data(e, base)
    v = ast.literal(e)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < 1:
        raise GraphcError(f"{key} must be the fraction of the samples it holds out, between 0 and 1 "
                          f"({key} = 0.1), or a quoted file", e.loc)
    return float(v)


def _data(e: ast.Expr, base: Path | None) -> str:
    if isinstance(e, ast.Name):  # a bundled data set
        return e.id
    if isinstance(e, ast.Str):
        path = Path(e.value)
        return str(base / path) if base is not None and not path.is_absolute() else e.value
    raise GraphcError("data must be a bundled name (mnist, digits, jargon) or a quoted path", e.loc)
