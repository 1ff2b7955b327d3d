"""GFLOP/s of the generated f32 GEMM vs numpy.matmul, both single-threaded, on MLP and LeNet
convolution training shapes.

Run from the repository root: python bench/gemm_bench.py
"""

import os

# Before numpy loads OpenBLAS: one thread, and its own kernel choice (these two variables, set on
# some machines for old OpenBLAS builds, make a current one pick a slower kernel).
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ.pop("OPENBLAS_CORETYPE", None)
os.environ.pop("OPENBLAS_L2_SIZE", None)

import ctypes  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from graphc.codegen.gemm import blocking, define_gemm, scratch_bytes  # noqa: E402
from graphc.codegen.jit import Native, emit  # noqa: E402
from graphc.codegen.target import host_target  # noqa: E402
from graphc.runtime.execute.step import aligned  # noqa: E402

# (label, M, N, K, trans_a, trans_b)
SHAPES = [
    ("X·W     128x784 · 784x256", 128, 256, 784, False, False),
    ("H·W     128x256 · 256x256", 128, 256, 256, False, False),
    ("Xᵀ·dY   (128x784)ᵀ · 128x256", 784, 256, 128, True, False),
    ("dY·Wᵀ   128x256 · (784x256)ᵀ", 128, 784, 256, False, True),
    ("512³", 512, 512, 512, False, False),
    ("X·W     batch 8: 8x784 · 784x256", 8, 256, 784, False, False),
    # LeNet's convolutions as GEMMs over im2col columns (batch 64): W·colsᵀ forward, dY·cols
    # for the weight gradient (K split across threads), Wᵀ·dY for the input gradient
    ("conv1   6x25 · 25x50176", 6, 50176, 25, False, False),
    ("conv1 dW 6x50176 · (25x50176)ᵀ", 6, 25, 50176, False, True),
    ("conv2   16x150 · 150x6400", 16, 6400, 150, False, False),
    ("conv2 dW 16x6400 · (150x6400)ᵀ", 16, 150, 6400, False, True),
    ("conv2 dX (16x150)ᵀ · 16x6400", 150, 6400, 16, True, False),
]
_I64 = ctypes.c_int64
_GEMM = ctypes.CFUNCTYPE(None, _I64, _I64, _I64, ctypes.c_void_p, _I64, ctypes.c_void_p, _I64,
                         ctypes.c_void_p, _I64, ctypes.c_int32, ctypes.c_void_p)


def compile_kernels():
    """One module holding each shape's kernel, its tile chosen for that shape (as the compiler
    does for a matmul node); kernels with the same tile and transposes are one function."""
    target = host_target()
    module = ir.Module()
    module.triple = target.triple
    names = [define_gemm(module, target, "f32", ta, tb, (M, N)).name for _, M, N, _, ta, tb in SHAPES]
    native = Native(emit(module, target), target)
    return native, [_GEMM(native.address(n)) for n in names]


def median_seconds(fns, reps: int = 30) -> list[float]:
    """Median time of each callable; calls are interleaved so load changes hit all alike."""
    times = [[] for _ in fns]
    for rep in range(reps + 1):
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            if rep:  # the first round warms caches
                ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) for ts in times]


def main() -> None:
    engine, kernels = compile_kernels()
    rng = np.random.default_rng(0)
    target = host_target()
    blk = blocking(target, "f32")
    scratch = aligned((scratch_bytes(target, "f32"),), np.uint8)
    print(f"target {target.cpu}, {target.vector_bits}-bit; default tile {blk.mr}x{blk.nr}, "
          f"MC {blk.mc} KC {blk.kc} NC {blk.nc}")
    print(f"{'shape':32} {'tile':>6} {'generated':>10} {'numpy':>8}  GFLOP/s, 1 thread, median")
    for (label, M, N, K, ta, tb), gemm in zip(SHAPES, kernels, strict=True):
        tile = blocking(target, "f32", (M, N))
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        c = np.empty((M, N), np.float32)
        op_a, op_b = (a.T if ta else a), (b.T if tb else b)
        args = (M, N, K, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1], c.ctypes.data, N, 0,
                scratch.ctypes.data)
        gemm(*args)
        ref = op_a.astype(np.float64) @ op_b.astype(np.float64)
        assert np.abs(c - ref).max() <= 1e-4 * np.abs(ref).max(), label
        flops = 2.0 * M * N * K
        ours, theirs = (flops / t / 1e9 for t in median_seconds(
            [functools.partial(gemm, *args), functools.partial(np.matmul, op_a, op_b, out=c)]))
        print(f"{label:32} {tile.mr:>3}x{tile.nr:<3} {ours:9.1f} {theirs:8.1f}")
    del engine


if __name__ == "__main__":
    main()
