"""The `train { ... }` block: read into a TrainConfig and validated with positioned errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from graphc.autodiff.optim import OPTIMIZERS
from graphc.errors import GraphcError, Loc
from graphc.frontend import ast

KEYS = ("optimizer", "batch", "epochs", "seed", "data")


@dataclass
class TrainConfig:
    optimizer: str = "sgd"
    opt_args: dict[str, float] = field(default_factory=dict)  # only the arguments written
    batch: int = 32
    epochs: int = 1
    seed: int = 0
    data: str | None = None  # a bundled name (mnist, digits) or a path
    # where each setting was written: "batch", "data", ..., "optimizer.lr"; "train" is the block
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
            in_opt = any(entry.key in args for args in OPTIMIZERS.values())
            hint = (f"optimizer arguments go inside the call: optimizer = sgd({entry.key}=...)"
                    if in_opt else did_you_mean(entry.key, KEYS) or f"keys: {', '.join(KEYS)}")
            raise GraphcError(f"unknown train key '{entry.key}'", entry.loc, hint=hint)
        cfg.locs[entry.key] = entry.value.loc
        if entry.key == "optimizer":
            _optimizer(entry.value, cfg)
        elif entry.key == "data":
            cfg.data = _data(entry.value, base)
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


def _optimizer(e: ast.Expr, cfg: TrainConfig) -> None:
    if isinstance(e, ast.Name):  # `optimizer = adam`: no arguments
        e = ast.Call(e.id, [], None, e.loc)
    if not isinstance(e, ast.Call) or e.scope is not None:
        raise GraphcError("optimizer must be a call such as sgd(lr=0.1)", e.loc)
    if e.func not in OPTIMIZERS:
        hint = did_you_mean(e.func, list(OPTIMIZERS)) or f"optimizers: {', '.join(OPTIMIZERS)}"
        raise GraphcError(f"unknown optimizer '{e.func}'", e.loc, hint=hint)
    known = OPTIMIZERS[e.func]
    if e.positional:
        raise GraphcError(f"{e.func} takes keyword arguments, e.g. {e.func}(lr=0.1)", e.positional[0].loc)
    cfg.optimizer = e.func
    for kw in e.kwargs:
        if kw.name not in known:
            raise GraphcError(f"{e.func} has no argument '{kw.name}'", kw.loc,
                              hint=did_you_mean(kw.name, list(known)) or f"arguments: {', '.join(known)}")
        if kw.name in cfg.opt_args:
            raise GraphcError(f"argument '{kw.name}' is given twice", kw.loc)
        v = ast.literal(kw.value)
        if v is None:
            raise GraphcError(f"{e.func}({kw.name}=...) must be a number or true/false", kw.value.loc)
        cfg.opt_args[kw.name] = float(v)  # booleans (nesterov=true) become 1.0 / 0.0
        cfg.locs[f"optimizer.{kw.name}"] = kw.value.loc
    if "lr" not in cfg.opt_args:
        raise GraphcError(f"{e.func} needs a learning rate", e.loc, hint=f"write {e.func}(lr=0.1, ...)")
    if cfg.opt_args["lr"] <= 0:
        raise GraphcError(f"lr must be positive, got {cfg.opt_args['lr']:g}", cfg.locs["optimizer.lr"])


def _data(e: ast.Expr, base: Path | None) -> str:
    if isinstance(e, ast.Name):  # a bundled data set
        return e.id
    if isinstance(e, ast.Str):
        path = Path(e.value)
        return str(base / path) if base is not None and not path.is_absolute() else e.value
    raise GraphcError("data must be a bundled name (mnist, digits) or a quoted path", e.loc)
