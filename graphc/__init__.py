"""graphc: a compiler for neural-network training steps (.net -> IR -> autodiff -> LLVM -> runtime)."""

__version__ = "0.1.0"
