"""graphc: a compiler for neural-network training steps (.net -> IR -> autodiff -> LLVM -> runtime).

`graphc.load(path)` gives a `graphc.Model` to train, differentiate and run from Python (docs/python.md).
"""

from graphc.about import __version__
from graphc import ops as _ops  # noqa: E402,F401  registers every op in the IR's table (graphc.ir.graph.OPS)
from graphc.api import Model, load

__all__ = ["__version__", "Model", "load"]
