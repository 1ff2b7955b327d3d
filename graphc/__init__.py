"""graphc: a compiler for neural-network training steps (.net -> IR -> autodiff -> LLVM -> runtime)."""

__version__ = "0.1.0"

from graphc import ops as _ops  # noqa: E402,F401  registers every op in the IR's table (graphc.ir.graph.OPS)
