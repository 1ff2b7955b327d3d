"""graphc: a compiler for neural-network training steps (.net -> IR -> autodiff -> LLVM -> runtime)."""

from graphc.about import __version__
from graphc import ops as _ops  # noqa: E402,F401  registers every op in the IR's table (graphc.ir.graph.OPS)

__all__ = ["__version__"]
