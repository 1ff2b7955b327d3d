"""Code generation: LLVM IR for kernels and the compilation target."""
