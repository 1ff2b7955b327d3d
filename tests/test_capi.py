"""The C library `graphc compile` writes: its ABI against the Python runtime (loaded with ctypes),
and the C example (examples/c) trained through it against `graphc train`."""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import threading
from pathlib import Path
from typing import cast

import llvmlite.binding as llvm
import numpy as np
import pytest

from graphc import driver
from graphc.autodiff.graphs import inference_graph
from graphc.cli import main
from graphc.errors import GraphcError
from graphc.frontend import Program
from graphc.artifacts import SHARED_SUFFIX, write_artifacts
from graphc.ir.init import init_params

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
CC = shlex.split(os.environ.get("CC") or "cc")
needs_cc = pytest.mark.skipif(shutil.which(CC[0]) is None, reason=f"no C compiler ({CC[0]}) to link with")
BATCH = 37  # the unit checks' library: an odd batch, so the 2-thread GEMM split is uneven
DTYPES = {0: "f32", 1: "f64", 2: "i32"}


class Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int), ("rank", ctypes.c_int),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("size", ctypes.c_int64)]


class Library:
    """lib<name> through ctypes, each ABI function typed as its header declares it."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        p, s, v, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int
        signatures = {
            "create": (p, [ctypes.c_uint64]), "destroy": (None, [p]),
            "num_inputs": (i, []), "input_info": (ctypes.POINTER(Info), [i]),
            "num_outputs": (i, []), "output_info": (ctypes.POINTER(Info), [i]),
            "num_params": (i, []), "param_info": (ctypes.POINTER(Info), [i]),
            "input": (v, [p, s]), "set_input": (i, [p, s, v]), "bind_input": (i, [p, s, v]),
            "set_lr": (i, [p, ctypes.c_double]), "train_step": (i, [p, ctypes.POINTER(ctypes.c_double)]),
            "infer": (i, [p]), "output": (v, [p, s]),
            "get_param": (i, [p, s, v]), "set_param": (i, [p, s, v]), "error": (s, [p]),
            "set_extern": (i, [p, s, v, v]),
        }
        self.dll = ctypes.CDLL(str(path))
        for fn, (res, args) in signatures.items():
            f = getattr(self.dll, f"{name}_{fn}")
            f.restype, f.argtypes = res, args
            setattr(self, fn, f)

    def infos(self, kind: str) -> list[tuple[str, str, tuple[int, ...]]]:
        n = getattr(self, f"num_{kind}s")()
        get = getattr(self, f"{kind}_info")
        assert not get(n) and not get(-1)  # out of range: NULL
        return [(t.name.decode(), DTYPES[t.dtype], tuple(t.shape[d] for d in range(t.rank)))
                for t in (get(k).contents for k in range(n))]

    def step(self, ctx: int) -> float:
        """One training step's loss."""
        loss = ctypes.c_double()
        assert self.train_step(ctx, ctypes.byref(loss)) == 0
        return loss.value

    def get(self, ctx: int, name: str, like: np.ndarray) -> np.ndarray:
        out = np.empty_like(like)
        assert self.get_param(ctx, name.encode(), out.ctypes.data) == 0
        return out

    def output_array(self, ctx: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
        ptr = ctypes.cast(self.output(ctx, name.encode()), ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(ptr, shape).copy()


def build(out: Path, batch: int, threads: int) -> Library:
    write_artifacts(driver.load(ROOT / "models/mlp.net"), out, batch, threads)
    return Library(out / f"libmlp{SHARED_SUFFIX}", "mlp")


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Library:
    return build(tmp_path_factory.mktemp("capi"), BATCH, threads=2)  # a worker thread per context


@pytest.fixture(scope="module")
def prog():
    return driver.load(ROOT / "models/mlp.net")


def batch_of(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((BATCH, 784), dtype=np.float32), rng.integers(0, 10, BATCH).astype(np.int32)


@needs_cc
def test_reports_names_shapes_and_dtypes(lib, prog):
    g = driver.train_graph(prog, BATCH)
    assert lib.infos("input") == [("x", "f32", (BATCH, 784)), ("y", "i32", (BATCH,))]
    assert lib.infos("output") == [("loss", "f32", ()), ("accuracy", "f32", ()), ("logits", "f32", (BATCH, 10))]
    assert lib.infos("param") == [(p.value.name, p.value.dtype, tuple(p.value.shape)) for p in g.params + g.state]
    assert lib.infos("param")[0] == ("fc1.W", "f32", (784, 256))


@needs_cc
def test_create_draws_params_from_their_initializers_and_seed(lib):
    a, b, c = lib.create(7), lib.create(7), lib.create(8)
    try:
        w = np.empty((784, 256), np.float32)
        wa, wb, wc = (lib.get(ctx, "fc1.W", w) for ctx in (a, b, c))
        assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)
        assert abs(wa.std() / np.sqrt(2 / 784) - 1) < 0.02 and abs(wa.mean()) < 1e-3  # he_normal
        assert not lib.get(a, "fc1.b", np.empty(256, np.float32)).any()
        assert not lib.get(a, "fc1.W.velocity", w).any()
    finally:
        for ctx in (a, b, c):
            lib.destroy(ctx)


@needs_cc
def test_param_round_trip_and_unknown_names(lib):
    ctx = lib.create(0)
    try:
        w = np.random.default_rng(0).standard_normal((256, 10)).astype(np.float32)
        assert lib.set_param(ctx, b"out.W", w.ctypes.data) == 0
        assert np.array_equal(lib.get(ctx, "out.W", w), w)
        assert lib.set_param(ctx, b"out.w", w.ctypes.data) == -1
        assert lib.get_param(ctx, b"nope", w.ctypes.data) == -1
        assert lib.set_input(ctx, b"lr", w.ctypes.data) == -1  # set with set_lr, not an input here
        assert not lib.output(ctx, b"nope") and not lib.input(ctx, b"nope")
        assert lib.set_extern(ctx, b"allreduce", None, None) == -1
        assert lib.error(ctx) == b"no extern slot allreduce (slots: none)"
    finally:
        lib.destroy(ctx)


@needs_cc
def test_steps_match_the_python_runtime(lib, prog):
    """Same params and batches: the C library's losses, updated params and logits are the Python
    runtime's (the same generated code)."""
    g = driver.train_graph(prog, BATCH)
    params = init_params(g.params, 3)
    step = driver.compile_graph(g, params, threads=2).step
    ctx = lib.create(0)
    try:
        for name, arr in params.items():
            assert lib.set_param(ctx, name.encode(), arr.ctypes.data) == 0
        lib.set_lr(ctx, 0.02)
        x, y = batch_of(1)
        bound = x.copy()
        assert lib.bind_input(ctx, b"x", bound.ctypes.data) == 0 and lib.input(ctx, b"x") == bound.ctypes.data
        assert lib.set_input(ctx, b"y", y.ctypes.data) == 0
        losses = [(lib.step(ctx), float(step(x=x, y=y, lr=0.02)["loss"])) for _ in range(3)]
        for c, py in losses:
            assert c == pytest.approx(py, abs=1e-5)
        assert losses[2][0] < losses[0][0]
        for name, arr in params.items():
            np.testing.assert_allclose(lib.get(ctx, name, arr), arr, atol=1e-6, err_msg=name)
        infer = driver.compile_graph(inference_graph(driver.forward(prog, BATCH, training=False)), params).step
        x2, _ = batch_of(2)
        bound[...] = x2  # a bound input is read where it is, at each call
        assert lib.infer(ctx) == 0
        np.testing.assert_allclose(lib.output_array(ctx, "logits", (BATCH, 10)), infer(x=x2)["logits"], atol=1e-5)
    finally:
        lib.destroy(ctx)


@needs_cc
def test_contexts_are_independent_and_run_at_once(lib):
    """Two contexts trained from two threads at once end where one trained alone does: no state
    (GEMM packing scratch, pool) is shared between them."""
    x, y = batch_of(4)

    def run(ctx, out):
        lib.set_input(ctx, b"x", x.ctypes.data)
        lib.set_input(ctx, b"y", y.ctypes.data)
        out.extend(lib.step(ctx) for _ in range(10))

    alone, ctx = [], lib.create(5)
    run(ctx, alone)
    lib.destroy(ctx)
    ctxs, results = [lib.create(5), lib.create(5)], [[], []]
    threads = [threading.Thread(target=run, args=(c, r)) for c, r in zip(ctxs, results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ctx in ctxs:
        lib.destroy(ctx)
    assert results[0] == alone and results[1] == alone


@needs_cc
def test_native_code_has_no_mutable_globals(lib):
    """Everything the generated code writes is reached through a context's table: its object has
    no data or bss sections (the GEMM packing buffers and the pool's state once lived there)."""
    obj = llvm.ObjectFileRef.from_data((lib.path.parent / "mlp.o").read_bytes())
    sections = {s.name().decode(): s.size() for s in obj.sections() if s.name()}
    assert sections.get(".ltext", sections.get(".text", 0)) > 10000
    assert not {n: size for n, size in sections.items()
                if size and n.lstrip(".").startswith(("data", "bss", "tdata", "tbss", "ldata", "lbss"))}


@needs_cc
def test_inputs_start_at_their_defaults(tmp_path):
    """apples.net: scalar inputs with default values, no batch dim, no params."""
    write_artifacts(driver.load(ROOT / "models/apples.net"), tmp_path, threads=1)
    apples = Library(tmp_path / f"libapples{SHARED_SUFFIX}", "apples")
    assert apples.infos("input")[0] == ("apple", "f32", ()) and apples.infos("param") == []
    ctx = apples.create(0)
    try:
        assert apples.infer(ctx) == 0
        assert apples.output_array(ctx, "total", ()) == pytest.approx((100 * 5 + 150 * 3) * 1.08)
        assert apples.set_input(ctx, b"tax", np.array(1.0, np.float32).ctypes.data) == 0
        assert apples.infer(ctx) == 0
        assert apples.output_array(ctx, "total", ()) == pytest.approx(950)
    finally:
        apples.destroy(ctx)
    assert "#define APPLES_BATCH 1 /* samples per step (compiled in: the model has no batch dim) */" \
        in (tmp_path / "apples.h").read_text()


# an embedding (gather; its gradient a scatter_add) of [B, 5] tokens, and an RNN whose cell
# gathers each step's tokens inside a scan, where no check of the input can bound them
EMBED = """
net embed
dim B
input tok : i32[B, 5]
input y : i32[B]
param emb : f32[13, 6] = normal(std=0.5)
param W : f32[6, 4] = xavier_uniform()
loss = softmax_cross_entropy(mean(gather(emb, tok), axes=1) @ W, y)
train { optimizer = adam(lr=0.01) }
"""
SCANNED = """
net scanned
dim B
input tok : i32[5, B]
input y : i32[B]
layer cell(t: i32[B], h: f32[B, 4]) -> f32[B, 4] {
  param emb : f32[7, 4] = normal(std=0.5)
  param Wh : f32[4, 4] = orthogonal()
  return tanh(gather(emb, t) + h @ Wh)
}
hs = scan(cell, tok, zeros([B, 4])) as rnn
loss = softmax_cross_entropy(reshape(slice(hs, axis=0, start=4, stop=5), shape=[B, 4]), y)
train { optimizer = sgd(lr=0.1) }
"""


def token_library(tmp_path: Path, src: str, name: str, batch: int) -> tuple[Library, Program]:
    (tmp_path / f"{name}.net").write_text(src)
    prog = driver.load(tmp_path / f"{name}.net")
    write_artifacts(prog, tmp_path, batch, threads=2)
    return Library(tmp_path / f"lib{name}{SHARED_SUFFIX}", name), prog


def set_all(lib: Library, ctx: int, params: dict[str, np.ndarray], **inputs: np.ndarray) -> None:
    for k, arr in params.items():
        assert lib.set_param(ctx, k.encode(), arr.ctypes.data) == 0
    for k, arr in inputs.items():
        assert lib.set_input(ctx, k.encode(), arr.ctypes.data) == 0


@needs_cc
@pytest.mark.parametrize("src,name,shape,rows", [(EMBED, "embed", (6, 5), 13), (SCANNED, "scanned", (5, 6), 7)])
def test_gathers_train_as_in_python(tmp_path, src, name, shape, rows):
    """A model that gathers (and scatters its gradient) keeps the fault slot in the C library:
    its steps give the Python runtime's losses and params."""
    lib, prog = token_library(tmp_path, src, name, 6)
    g = driver.train_graph(prog, 6)
    params = init_params(g.params, 1)
    step = driver.compile_graph(g, params, threads=2).step
    rng = np.random.default_rng(0)
    tok, y = rng.integers(0, rows, shape).astype(np.int32), rng.integers(0, 4, 6).astype(np.int32)
    ctx = lib.create(0)
    try:
        set_all(lib, ctx, params, tok=tok, y=y)
        for _ in range(3):
            want = float(step(tok=tok, y=y, lr=prog.train.opt_args["lr"])["loss"])
            assert lib.step(ctx) == pytest.approx(want, abs=1e-5)
        assert lib.error(ctx) == b""
        for k, arr in params.items():
            np.testing.assert_allclose(lib.get(ctx, k, arr), arr, atol=1e-6, err_msg=k)
    finally:
        lib.destroy(ctx)


@needs_cc
def test_an_index_out_of_range_is_a_status_and_a_message(tmp_path):
    """A token past the embedding: refused before the step when it is an input the library checks,
    reported by the kernel (the fault slot) when it is read inside a scan; neither crashes, and the
    next good step runs."""
    embed, _ = token_library(tmp_path, EMBED, "embed", 6)
    ctx = embed.create(0)
    try:
        tok, y = np.zeros((6, 5), np.int32), np.zeros(6, np.int32)
        tok[2, 3] = 20
        set_all(embed, ctx, {}, tok=tok, y=y)
        emb = embed.get(ctx, "emb", np.empty((13, 6), np.float32))
        assert embed.train_step(ctx, None) == -2  # GRAPHC_ERANGE
        assert embed.error(ctx) == b"input tok: element 13 is 20, out of range [0, 13); nothing ran"
        np.testing.assert_array_equal(embed.get(ctx, "emb", emb), emb)
        assert embed.infer(ctx) == -2
        tok[2, 3] = 12
        set_all(embed, ctx, {}, tok=tok)
        assert embed.train_step(ctx, None) == 0 and embed.error(ctx) == b""
    finally:
        embed.destroy(ctx)
    scanned, _ = token_library(tmp_path, SCANNED, "scanned", 6)
    ctx = scanned.create(0)
    try:
        tok, y = np.zeros((5, 6), np.int32), np.zeros(6, np.int32)
        tok[1, 4] = -3
        set_all(scanned, ctx, {}, tok=tok, y=y)
        assert scanned.train_step(ctx, None) == -3  # GRAPHC_EINDEX
        assert re.fullmatch(rb"\S*scanned.net:9:\d+: gather: index -3 out of range \[0, 7\)", scanned.error(ctx))
        tok[1, 4] = 6
        set_all(scanned, ctx, {}, tok=tok)
        assert scanned.train_step(ctx, None) == 0 and scanned.error(ctx) == b""
    finally:
        scanned.destroy(ctx)


# logits pass through a function the host binds to slot "hook", in both steps
EXT = """
net ext
dim B
input x : f32[B, 3]
input y : i32[B] nograd
param W : f32[3, 4] = xavier_uniform()
output logits = extern_call(x @ W, slot="hook")
loss = softmax_cross_entropy(logits, y)
train { optimizer = sgd(lr=0.5) }
"""
# a C callback through the header's typedef (-Werror: a mismatch fails to build): doubles the
# values and notes, through `user`, how it was called
TWICE = """
#include "ext.h"
typedef struct { int64_t calls, count; int32_t dtype; } seen;
void twice(void *user, void *data, int64_t count, int32_t dtype) {
    seen *s = user;
    s->calls++, s->count = count, s->dtype = dtype;
    for (int64_t i = 0; i < count; i++) ((float *)data)[i] *= 2;
}
graphc_extern_fn twice_fn = twice;
"""


class Seen(ctypes.Structure):
    _fields_ = [("calls", ctypes.c_int64), ("count", ctypes.c_int64), ("dtype", ctypes.c_int32)]


@pytest.fixture(scope="module")
def ext(tmp_path_factory) -> tuple[Library, Program, int]:
    """The ext library, its program, and the address of the C callback `twice`."""
    tmp = tmp_path_factory.mktemp("ext")
    lib, prog = token_library(tmp, EXT, "ext", 4)
    (tmp / "twice.c").write_text(TWICE)
    subprocess.run([*CC, "-shared", "-fPIC", "-Wall", "-Werror", f"-I{tmp}", "-o", str(tmp / "libtwice.so"),
                    str(tmp / "twice.c")], check=True)
    twice = ctypes.CDLL(str(tmp / "libtwice.so")).twice
    return lib, prog, cast(int, ctypes.cast(twice, ctypes.c_void_p).value)


@needs_cc
def test_an_extern_call_calls_the_bound_c_function_with_its_user_pointer(ext):
    """Both steps call the function bound with set_extern, with its user pointer; training and
    inference match the Python runtime bound to the same function."""
    lib, prog, twice = ext
    g = driver.train_graph(prog, 4)
    params = init_params(g.params, 2)
    step = driver.compile_graph(g, params, threads=2).step
    step.bind_extern("hook", lambda values: values.__imul__(2))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)).astype(np.float32), rng.integers(0, 4, 4).astype(np.int32)
    seen, ctx = Seen(), lib.create(0)
    try:
        set_all(lib, ctx, params, x=x, y=y)
        assert lib.set_extern(ctx, b"hook", twice, ctypes.byref(seen)) == 0 and lib.error(ctx) == b""
        for _ in range(3):
            assert lib.step(ctx) == pytest.approx(float(step(x=x, y=y, lr=0.5)["loss"]), abs=1e-6)
        np.testing.assert_allclose(lib.get(ctx, "W", params["W"]), params["W"], atol=1e-6)
        assert lib.infer(ctx) == 0
        np.testing.assert_allclose(lib.output_array(ctx, "logits", (4, 4)), 2 * x @ params["W"], atol=1e-5)
        assert (seen.calls, seen.count, seen.dtype) == (4, 16, 0)  # 3 steps and a pass of 4 x 4 f32
    finally:
        lib.destroy(ctx)


@needs_cc
def test_an_unbound_or_unknown_extern_slot_is_a_status_and_a_message(ext):
    lib, _, twice = ext
    seen, ctx = Seen(), lib.create(0)
    try:
        w = lib.get(ctx, "W", np.empty((3, 4), np.float32))
        unbound = b'extern slot hook has no function: ext_set_extern(ctx, "hook", fn, user) first; nothing ran'
        assert lib.train_step(ctx, None) == -1 and lib.error(ctx) == unbound  # GRAPHC_EINVAL
        assert lib.infer(ctx) == -1 and lib.error(ctx) == unbound
        np.testing.assert_array_equal(lib.get(ctx, "W", w), w)
        assert lib.set_extern(ctx, b"hoook", twice, None) == -1
        assert lib.error(ctx) == b"no extern slot hoook (slots: hook)"
        assert lib.set_extern(ctx, b"hook", twice, ctypes.byref(seen)) == 0 and lib.train_step(ctx, None) == 0
        assert lib.set_extern(ctx, b"hook", None, None) == 0  # unbinds it
        assert lib.train_step(ctx, None) == -1 and lib.error(ctx) == unbound
    finally:
        lib.destroy(ctx)


def test_compile_without_a_c_compiler_says_so_and_writes_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "graphc-no-such-cc")
    with pytest.raises(GraphcError, match="no C compiler: 'graphc-no-such-cc' not found"):
        write_artifacts(driver.load(ROOT / "models/apples.net"), tmp_path)
    assert {"apples.h", "apples_capi.c", "apples.o", "apples.ll"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / f"libapples{SHARED_SUFFIX}").exists()


def _has_zlib(tmp: Path) -> bool:
    probe = tmp / "probe.c"
    probe.write_text("#include <zlib.h>\nint main(void) { return zlibVersion() == 0; }\n")
    return subprocess.run([*CC, str(probe), "-o", str(tmp / "probe"), "-lz"], capture_output=True).returncode == 0


def example(tmp: Path, cc: list[str], *flags: str) -> Path:
    """examples/c/train_mnist.c built by `cc` against the library in `tmp`."""
    exe = tmp / "train_mnist"
    subprocess.run([*cc, "-O2", "-Wall", "-Werror", *flags, f"-I{tmp}", "-o", str(exe),
                    str(ROOT / "examples/c/train_mnist.c"), f"-L{tmp}", "-lmlp", "-lz", "-lm",
                    f"-Wl,-rpath,{tmp}"], check=True)
    return exe


def accuracy(out: str) -> float:
    return float(re.search(r"epoch 1: .*test_accuracy ([0-9.]+)", out).group(1))


@needs_cc
def test_c_example_trains_mnist_like_graphc_train(tmp_path, capsys):
    if not _has_zlib(tmp_path):
        pytest.skip("zlib (zlib.h, -lz) is not installed: the example reads MNIST through it")
    build(tmp_path, 128, threads=1)
    run = subprocess.run([str(example(tmp_path, CC)), str(ROOT / "data/mnist"), "1", "0"], capture_output=True,
                         text=True, check=True, timeout=300)
    c_acc = accuracy(run.stdout)
    assert main(["train", str(ROOT / "models/mlp.net"), "--epochs", "1", "--seed", "0", "--no-progress",
                 "--threads", "1"]) == 0
    py_acc = accuracy(capsys.readouterr().out)
    assert c_acc >= 0.95 and py_acc >= 0.95
    assert abs(c_acc - py_acc) <= 0.015, (c_acc, py_acc)


@needs_cc
@pytest.mark.skipif(not (shutil.which("mpicc") and shutil.which("mpirun")),
                    reason="no MPI (mpicc and mpirun, from Open MPI or MPICH) to build and run the example with")
def test_c_example_trains_data_parallel_with_mpi_like_one_process(tmp_path):
    """The example built with -DGRAPHC_MPI, on 2 ranks of a library compiled with --ranks 2, binds
    the allreduce slot to MPI_Allreduce: its epoch is the single-process one on the same global
    batches up to the order of summation, and both ranks end with the same params."""
    if not _has_zlib(tmp_path):
        pytest.skip("zlib (zlib.h, -lz) is not installed: the example reads MNIST through it")
    one, two = tmp_path / "one", tmp_path / "two"
    build(one, 128, threads=1)
    assert main(["compile", str(ROOT / "models/mlp.net"), "-o", str(two), "--ranks", "2", "--threads", "1"]) == 0
    assert "#define MLP_BATCH 64 " in (two / "mlp.h").read_text()
    args = [str(ROOT / "data/mnist"), "1", "0"]
    alone = subprocess.run([str(example(one, CC)), *args], capture_output=True, text=True, check=True, timeout=300)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}  # as root, in CI
    mpirun = ["mpirun", "-np", "2"] + (["--oversubscribe"] if "Open MPI" in subprocess.run(
        ["mpirun", "--version"], capture_output=True, text=True).stdout else [])
    ranks = subprocess.run([*mpirun, str(example(two, ["mpicc"], "-DGRAPHC_MPI")), *args], capture_output=True,
                           text=True, env=env, timeout=300)
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    hashes = dict(re.findall(r"rank (\d): params hash (\w+)", ranks.stdout))
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"], ranks.stdout
    loss = lambda out: float(re.search(r"epoch 1: .*train_loss ([0-9.]+)", out).group(1))
    assert loss(ranks.stdout) == pytest.approx(loss(alone.stdout), abs=0.005)
    assert accuracy(ranks.stdout) >= 0.95
    assert abs(accuracy(ranks.stdout) - accuracy(alone.stdout)) <= 0.01, (ranks.stdout, alone.stdout)
