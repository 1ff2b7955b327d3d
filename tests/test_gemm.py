"""Generated GEMM kernels vs a float64 NumPy reference: shapes, transposes, strides, targets."""

import ctypes
import functools

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from graphc.codegen.gemm import blocking, define_gemm, scratch_bytes
from graphc.codegen.jit import Native, emit
from graphc.codegen.target import Target, host_target
from graphc.runtime.step import aligned

VARIANTS = [(False, False), (False, True), (True, False), (True, True)]
NP_DTYPE = {"f32": np.float32, "f64": np.float64}
RTOL = {"f32": 1e-5, "f64": 1e-12}
HOST = host_target()
# Narrower vector targets (and Zen 4's 16x16 tile) still run on this CPU, so their code paths
# can be checked here; they are not meant to be fast.
AVX2 = Target(HOST.triple, "x86-64-v3", "", 256)
SSE2 = Target(HOST.triple, "x86-64", "", 128)
ZEN4 = Target(HOST.triple, "znver4", "", 512)
_I64 = ctypes.c_int64
_GEMM = ctypes.CFUNCTYPE(None, _I64, _I64, _I64, ctypes.c_void_p, _I64, ctypes.c_void_p, _I64,
                         ctypes.c_void_p, _I64, ctypes.c_int32, ctypes.c_void_p)
_engines = []  # compiled code and scratch must outlive the ctypes function pointers


@functools.cache
def kernels(target: Target, dtype: str) -> dict:
    """JIT-compile all four transpose variants for `target` into one module; each is called
    with the GEMM args and passes its packing scratch itself."""
    module = ir.Module()
    module.triple = target.triple
    names = {v: define_gemm(module, target, dtype, *v).name for v in VARIANTS}
    native = Native(emit(module, target), target)
    scratch = aligned((scratch_bytes(target, dtype),), np.uint8)
    _engines.append((native, scratch))
    return {v: lambda *args, f=_GEMM(native.address(n)): f(*args, scratch.ctypes.data)
            for v, n in names.items()}


def stored(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """`x` as a view into a wider buffer (row stride > width) when pad > 0."""
    if pad == 0:
        return np.ascontiguousarray(x)
    buf = rng.standard_normal((x.shape[0], x.shape[1] + pad)).astype(x.dtype)
    buf[:, : x.shape[1]] = x
    return buf[:, : x.shape[1]]


def run_gemm(target, dtype, M, N, K, trans_a, trans_b, accumulate, pad=0, seed=0):
    rng = np.random.default_rng(seed)
    t = NP_DTYPE[dtype]
    op_a = rng.standard_normal((M, K)).astype(t)
    op_b = rng.standard_normal((K, N)).astype(t)
    a = stored(op_a.T if trans_a else op_a, pad, rng)
    b = stored(op_b.T if trans_b else op_b, pad + 3 if pad else 0, rng)
    c_full = rng.standard_normal((M, N + 2 * pad)).astype(t)
    c = c_full[:, :N]
    before = c_full.copy()
    kernels(target, dtype)[(trans_a, trans_b)](
        M, N, K, a.ctypes.data, a.strides[0] // a.itemsize, b.ctypes.data,
        b.strides[0] // b.itemsize, c.ctypes.data, c_full.strides[0] // c.itemsize, int(accumulate))
    ref = op_a.astype(np.float64) @ op_b.astype(np.float64)
    scale = np.abs(op_a).astype(np.float64) @ np.abs(op_b).astype(np.float64)
    if accumulate:
        ref += before[:, :N]
        scale += np.abs(before[:, :N])
    err = np.abs(c.astype(np.float64) - ref)
    assert np.all(err <= RTOL[dtype] * scale + 1e-30), f"max error {err.max()}"
    np.testing.assert_array_equal(c_full[:, N:], before[:, N:])  # nothing written past N


SHAPES = [(127, 255, 783), (127, 783, 255), (1, 10, 1), (17, 1, 33), (33, 65, 17), (200, 300, 50),
          (1, 1, 1), (9, 33, 300),
          (8, 64, 300), (16, 256, 784), (13, 96, 40)]  # few rows, whole strips: B read in place


@pytest.mark.parametrize("trans_a,trans_b", VARIANTS)
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_host_shapes(dtype, trans_a, trans_b):
    for i, (M, N, K) in enumerate(SHAPES):
        for accumulate in (False, True):
            run_gemm(HOST, dtype, M, N, K, trans_a, trans_b, accumulate, seed=i)


@pytest.mark.parametrize("trans_a,trans_b", VARIANTS)
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_leading_dimensions(dtype, trans_a, trans_b):
    for M, N, K in [(37, 45, 70), (64, 64, 64), (3, 70, 5), (5, 64, 70)]:
        run_gemm(HOST, dtype, M, N, K, trans_a, trans_b, accumulate=True, pad=5)
        run_gemm(HOST, dtype, M, N, K, trans_a, trans_b, accumulate=False, pad=17)


def test_blocks_larger_than_cache_blocking():
    # More than one block of each of NC, KC and MC, with remainders.
    blk = blocking(HOST, "f32")
    M, N, K = blk.mc + 19, blk.nc + 45, 2 * blk.kc + 37
    run_gemm(HOST, "f32", M, N, K, False, True, accumulate=True)
    run_gemm(HOST, "f32", M, N, K, True, False, accumulate=False)


@pytest.mark.parametrize("target", [AVX2, SSE2, ZEN4], ids=["avx2", "sse2", "zen4"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_other_targets(target, dtype):
    for trans_a, trans_b in VARIANTS:
        for i, (M, N, K) in enumerate([(37, 29, 45), (1, 10, 1), (17, 1, 33), (5, 19, 0)]):
            run_gemm(target, dtype, M, N, K, trans_a, trans_b, accumulate=i % 2 == 1, seed=i)
        run_gemm(target, dtype, 23, 31, 41, trans_a, trans_b, accumulate=False, pad=3)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_k_zero(dtype):
    t = NP_DTYPE[dtype]
    a, b = np.ones((1, 1), t), np.ones((1, 1), t)
    for accumulate, expected in ((0, 0.0), (1, 7.0)):
        c = np.full((5, 9), 7.0, t)
        kernels(HOST, dtype)[(False, False)](5, 9, 0, a.ctypes.data, 1, b.ctypes.data, 9,
                                             c.ctypes.data, 9, accumulate)
        assert np.all(c == expected)


def test_empty_output_is_untouched():
    a, b = np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)
    for M, N in [(0, 4), (4, 0)]:
        c = np.full((4, 4), 3.0, np.float32)
        kernels(HOST, "f32")[(False, False)](M, N, 4, a.ctypes.data, 4, b.ctypes.data, 4,
                                             c.ctypes.data, 4, 0)
        assert np.all(c == 3.0)


def test_define_is_idempotent_and_signature():
    module = ir.Module()
    first = define_gemm(module, HOST, "f32", False, True)
    assert define_gemm(module, HOST, "f32", False, True) is first
    assert first.name == "graphc_gemm_f32_nt"
    for dtype in ("f32", "f64"):
        for v in VARIANTS:
            define_gemm(module, HOST, dtype, *v)
    llvm.parse_assembly(str(module)).verify()
    i64, f = ir.IntType(64), ir.FloatType().as_pointer()
    assert first.function_type == ir.FunctionType(
        ir.VoidType(), [i64, i64, i64, f, i64, f, i64, f, i64, ir.IntType(32), ir.IntType(8).as_pointer()])


def test_target_lanes_and_key():
    assert HOST.lanes("f32") == HOST.vector_bits // 32
    assert SSE2.lanes("f64") == 2 and AVX2.lanes("f32") == 8
    assert HOST.cpu in HOST.key() and HOST.triple in HOST.key()
    assert host_target() is HOST
