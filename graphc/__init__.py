"""graphc: a compiler for neural-network training steps (.net -> IR -> autodiff -> LLVM -> runtime).

`graphc.load(path)` gives a `graphc.Model` to train, differentiate and run from Python (docs/python.md).
"""

from typing import Any

from graphc.about import __version__
from graphc import ops as _ops  # noqa: E402,F401  registers every op in the IR's table (graphc.ir.graph.OPS)

__all__ = ["__version__", "Model", "load"]


def __getattr__(name: str) -> Any:
    """The API on first use: importing graphc (for its compiler stages) does not load the runtime."""
    if name in ("Model", "load"):
        from graphc import api
        return getattr(api, name)
    raise AttributeError(f"module 'graphc' has no attribute {name!r}")
