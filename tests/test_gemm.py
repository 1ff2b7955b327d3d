"""Generated GEMM kernels vs a float64 NumPy reference: shapes, transposes, strides, targets, the
register tiles chosen for the shape of C, and the compiler's splits of a GEMM across threads."""

import ctypes
import functools

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from graphc.codegen.gemm import blocking, define_gemm, dot_blocking, scratch_bytes
from graphc.codegen.jit import Native, emit
from graphc.codegen.module import _k_blocks
from graphc.codegen.target import Target, host_target
from graphc.driver import compile_graph
from graphc.ir.graph import Builder, Graph, Input, TensorType, Value
from graphc.runtime.execute.step import aligned

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

VARIANTS = [(False, False), (False, True), (True, False), (True, True)]
PAIRS = [[(False, False), (True, True)], [(False, True), (True, False)]]
NP_DTYPE = {"f32": np.float32, "f64": np.float64}
RTOL = {"f32": 1e-5, "f64": 1e-12}
HOST = host_target()
# Narrower vector targets (and Zen 4's 16x16 tile) still run on this CPU, so their code paths
# can be checked here; they are not meant to be fast. (The 8x2 tile of other 512-bit CPUs is f64's
# on every 512-bit target.)
AVX2 = Target(HOST.triple, "x86-64-v3", "", 256)
SSE2 = Target(HOST.triple, "x86-64", "", 128)
ZEN4 = Target(HOST.triple, "znver4", "", 512)
_I64 = ctypes.c_int64
_GEMM = ctypes.CFUNCTYPE(None, _I64, _I64, _I64, ctypes.c_void_p, _I64, ctypes.c_void_p, _I64,
                         ctypes.c_void_p, _I64, ctypes.c_int32, ctypes.c_void_p)
_engines = []  # compiled code and scratch must outlive the ctypes function pointers


@functools.cache
def kernel(target: Target, dtype: str, trans_a: bool, trans_b: bool,
           tile: tuple[int, int] | None = None, depth: int | None = None):
    """JIT-compile one transpose variant for `target`, with the register tile `blocking` picks
    for a C of shape `tile` (None: the default tile) and K `depth` (where the dot-product kernel
    may be picked); it is called with the GEMM args and passes its packing scratch itself."""
    module = ir.Module()
    module.triple = target.triple
    name = define_gemm(module, target, dtype, trans_a, trans_b, tile, depth).name
    native = Native(emit(module, target), target)
    scratch = aligned((scratch_bytes(target, dtype),), np.uint8)
    _engines.append((native, scratch))
    return lambda *args, f=_GEMM(native.address(name)): f(*args, scratch.ctypes.data)


def stored(x: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """`x` as a view into a wider buffer (row stride > width) when pad > 0."""
    if pad == 0:
        return np.ascontiguousarray(x)
    buf = rng.standard_normal((x.shape[0], x.shape[1] + pad)).astype(x.dtype)
    buf[:, : x.shape[1]] = x
    return buf[:, : x.shape[1]]


def run_gemm(target, dtype, M, N, K, trans_a, trans_b, accumulate, pad=0, seed=0, tile=None, depth=None):
    rng = np.random.default_rng(seed)
    t = NP_DTYPE[dtype]
    op_a = rng.standard_normal((M, K)).astype(t)
    op_b = rng.standard_normal((K, N)).astype(t)
    a = stored(op_a.T if trans_a else op_a, pad, rng)
    b = stored(op_b.T if trans_b else op_b, pad + 3 if pad else 0, rng)
    c_full = rng.standard_normal((M, N + 2 * pad)).astype(t)
    c = c_full[:, :N]
    before = c_full.copy()
    kernel(target, dtype, trans_a, trans_b, tile, depth)(
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
          (8, 64, 300), (16, 256, 784), (13, 96, 40),  # few rows, whole strips: B read in place
          (48, 40, 512)]  # A's rows 2 KiB apart (f32): packed, not read in place


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


def tiles(target: Target, dtype: str) -> dict:
    """A C shape for each register tile the rule picks, M from 1 to four times the default MR
    (past it, tiles of fewer rows that fill M), C narrower than a vector and several vectors wide
    (neither a multiple of one)."""
    default, lanes = blocking(target, dtype), target.lanes(dtype)
    out = {}
    for m in range(1, 4 * default.mr):
        for n in (lanes // 2 + 1, 7 * lanes + 3):
            blk = blocking(target, dtype, (m, n))
            out.setdefault((blk.mr, blk.nr), (m, n))
    return out


@pytest.mark.parametrize("target,dtype", [(HOST, "f32"), (HOST, "f64"), (AVX2, "f32"), (SSE2, "f64")],
                         ids=["host-f32", "host-f64", "avx2-f32", "sse2-f64"])
def test_tiles_for_the_shape_of_c(target, dtype):
    found = tiles(target, dtype)
    lanes, default = target.lanes(dtype), blocking(target, dtype)
    assert (default.mr, default.nr) in found and any(mr < default.mr for mr, _ in found)
    for i, ((mr, nr), (m, n)) in enumerate(found.items()):
        blk = blocking(target, dtype, (m, n))
        # registers: accumulators, the B vectors and a broadcast; blocks of whole tiles
        assert mr * nr // lanes + nr // lanes + 1 <= (32 if target.vector_bits == 512 else 16)
        assert blk.mc % mr == 0 and blk.nc % nr == 0 and blk.kc % 16 == 0
        # Two transpose variants per tile (compiling all four for every tile takes a minute):
        # {nn, tt} and {nt, tn} alternate, so an M's narrow and wide tiles see all four, and
        # either pair uses every packing routine and all but one micro-kernel of its tile
        for j, (ta, tb) in enumerate(PAIRS[i % 2]):
            # the shape it was chosen for (K with a remainder; over KC: two K blocks), then more
            # rows than MC and columns than NC, in strips of this tile
            run_gemm(target, dtype, m, n, 37 + 263 * j, ta, tb, accumulate=j == 0, seed=i, tile=(m, n))
            run_gemm(target, dtype, blk.mc + 2 * mr + 1, blk.nc + nr + 3, 19, ta, tb,
                     accumulate=j == 1, pad=j, seed=i, tile=(m, n))


def test_tiles_coexist_in_one_module():
    # the conv and batch-8 shapes; GEMMs with different tiles share one step's module
    module = ir.Module()
    module.triple = HOST.triple
    shapes = [(6, 50176), (6, 25), (16, 6400), (8, 256), (128, 10)]
    names = {define_gemm(module, HOST, "f32", False, False, s).name for s in shapes}
    blks = [blocking(HOST, "f32", s) for s in shapes]
    assert names == {f"graphc_gemm_f32_nn_{b.mr}x{b.nr}" for b in blks}
    assert len(names) == len({(b.mr, b.nr) for b in blks}) > 2
    assert blocking(HOST, "f32", (6, 50176)).mr == 6 and blocking(HOST, "f32", (8, 256)).mr == 8
    llvm.parse_assembly(str(module)).verify()


# C = A·Bᵀ small, K long: the dot-product kernel (conv weight gradients), every tile its rule picks
DOT_SHAPES = [(6, 25, 5003), # K blocks of 4224 (f32) and 2112 (f64)
              (16, 150, 1000), (5, 7, 3001), (1, 1, 71), (13, 9, 997), (3, 40, 400)]


@pytest.mark.parametrize("target", [HOST, AVX2], ids=["host", "avx2"])
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_dot_product_kernel(target, dtype):
    for i, (M, N, K) in enumerate(DOT_SHAPES):
        assert dot_blocking(target, dtype, False, True, M, N, K) is not None
        for accumulate in (False, True):
            run_gemm(target, dtype, M, N, K, False, True, accumulate, pad=i % 2 * 5, seed=i,
                     tile=(M, N), depth=K)
    assert dot_blocking(target, dtype, False, False, 6, 25, 5003) is None  # B not K-contiguous
    assert dot_blocking(target, dtype, False, True, 128, 256, 784) is None  # C large: packed GEMM


def matmul_step(M, N, K, ta, tb, threads):
    g = Graph("gemm")
    b = Builder(g)
    a = Value("a", TensorType("f32", (K, M) if ta else (M, K)))
    w = Value("w", TensorType("f32", (N, K) if tb else (K, N)))
    g.inputs = [Input(a), Input(w)]
    g.outputs = {"y": b.op("matmul", a, w, name_out="y", ta=ta, tb=tb)}
    return compile_graph(g, threads=threads)


# Through the compiler on two threads: K split (C 5x23 over K 20011: partial Cs added; A·Bᵀ by the
# dot-product kernel), columns
# (6 rows: the 6-row tile in NR-aligned shares) and rows (700x20)
@pytest.mark.parametrize("M,N,K,k_split", [(5, 23, 20011, True), (6, 5003, 101, False),
                                           (700, 20, 203, False)])
@pytest.mark.parametrize("trans_a,trans_b", VARIANTS)
def test_compiled_gemm_split_across_threads(M, N, K, k_split, trans_a, trans_b):
    compiled = matmul_step(M, N, K, trans_a, trans_b, threads=2)
    (k,) = compiled.schedule.kernels
    assert (_k_blocks(k.nodes[0], HOST) > 1) == k_split
    rng = np.random.default_rng(M)
    op_a, op_b = rng.standard_normal((M, K)), rng.standard_normal((K, N))
    a, w = (op_a.T if trans_a else op_a), (op_b.T if trans_b else op_b)
    y = compiled.step(a=a.astype(np.float32), w=w.astype(np.float32))["y"]
    op_a, op_b = (x.astype(np.float32).astype(np.float64) for x in (op_a, op_b))
    err = np.abs(y - op_a @ op_b)
    assert np.all(err <= RTOL["f32"] * (np.abs(op_a) @ np.abs(op_b))), f"max error {err.max()}"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_k_zero(dtype):
    t = NP_DTYPE[dtype]
    a, b = np.ones((1, 1), t), np.ones((1, 1), t)
    for accumulate, expected in ((0, 0.0), (1, 7.0)):
        c = np.full((5, 9), 7.0, t)
        kernel(HOST, dtype, False, False)(5, 9, 0, a.ctypes.data, 1, b.ctypes.data, 9,
                                          c.ctypes.data, 9, accumulate)
        assert np.all(c == expected)


def test_empty_output_is_untouched():
    a, b = np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)
    for M, N in [(0, 4), (4, 0)]:
        c = np.full((4, 4), 3.0, np.float32)
        kernel(HOST, "f32", False, False)(M, N, 4, a.ctypes.data, 4, b.ctypes.data, 4,
                                          c.ctypes.data, 4, 0)
        assert np.all(c == 3.0)


def test_define_is_idempotent_and_signature():
    module = ir.Module()
    first = define_gemm(module, HOST, "f32", False, True)
    assert define_gemm(module, HOST, "f32", False, True) is first
    blk = blocking(HOST, "f32")
    assert first.name == f"graphc_gemm_f32_nt_{blk.mr}x{blk.nr}"
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
