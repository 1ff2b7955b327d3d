"""The front end: .net source -> AST -> forward graph."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from graphc.errors import GraphcError, check_regular
from graphc.frontend.config import TrainConfig, train_config
from graphc.frontend.lower import lower
from graphc.frontend.parse import parse
from graphc.ir.graph import Graph

__all__ = ["Program", "TrainConfig", "load", "load_source"]


@dataclass
class Program:
    graph: Graph        # the forward graph for training, symbolic dims unbound
    train: TrainConfig  # the train block (defaults where it is silent)
    source: str
    path: str
    eval_graph: Graph   # the forward graph for evaluation: no dropout, batch norm's running stats


def load(path: str | os.PathLike) -> Program:
    """Read and compile a .net file to its forward graph and train settings."""
    check_regular(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is not source
    except (OSError, UnicodeDecodeError) as e:
        raise GraphcError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return load_source(text, str(path))


def load_source(text: str, filename: str = "<string>") -> Program:
    """Compile .net source text; `filename` positions errors and anchors relative data paths."""
    base = None if filename.startswith("<") else Path(filename).parent
    try:
        module = parse(text, filename)
        return Program(lower(module), train_config(module, base), text, filename,
                       lower(module, training=False))
    except GraphcError as e:
        raise e.with_source(text)
