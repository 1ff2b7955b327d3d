"""Every target graphc tunes for, on any host: a training step compiled with each target's tuning
(GEMM register tiles, cache blocking, thread splits) computes what the host's own code computes.
A target whose instructions this host lacks (512-bit vectors on an AVX2 machine, another
architecture) is compiled to a native object only; AArch64 is always among those."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphc import driver
from graphc.codegen.jit import emit
from graphc.codegen.module import build_module
from graphc.codegen.pool import build_pool
from graphc.codegen.target import Target, host_target
from graphc.ir.graph import NP_DTYPES
from graphc.ir.init import init_params
from graphc.passes.pipeline import schedule

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it

ROOT = Path(__file__).resolve().parent.parent
HOST = host_target()
# (CPU, vector bits): AVX-512 on Zen 4, Zen 5 and Intel; AVX2; SSE2
X86 = [("znver4", 512), ("znver5", 512), ("icelake-server", 512), ("x86-64-v3", 256), ("x86-64", 128)]
MODELS = {"mlp": 16, "lenet": 8}  # model: batch
STEPS = 3


def runnable(bits: int) -> bool:
    return HOST.triple.startswith("x86_64") and bits <= HOST.vector_bits


def emulated(cpu: str, bits: int) -> Target:
    """`cpu`'s tuning, generating only instructions this host has where it can run them."""
    return Target(HOST.triple, cpu, HOST.features if runnable(bits) else "", bits)


def train(model: str, target: Target) -> dict[str, np.ndarray]:
    prog = driver.load(ROOT / "models" / f"{model}.net")
    batch = MODELS[model]
    g = driver.train_graph(prog, batch)
    params = init_params(g.params, 0)
    step = driver.compile_graph(g, params, target=target, threads=2).step
    rng = np.random.default_rng(1)
    x, y = (i.value for i in g.inputs[:2])
    for _ in range(STEPS):
        step(**{x.name: rng.random(x.shape).astype(NP_DTYPES[x.dtype]),
                y.name: rng.integers(0, 10, y.shape).astype(np.int32), "lr": 0.05})
    return params


@pytest.fixture(scope="module")
def host_params() -> dict[str, dict[str, np.ndarray]]:
    return {m: train(m, HOST) for m in MODELS}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("cpu,bits", X86, ids=[c for c, _ in X86])
def test_each_target_trains_like_the_host(cpu, bits, model, host_params):
    target = emulated(cpu, bits)
    if not runnable(bits):
        g = driver.train_graph(driver.load(ROOT / "models" / f"{model}.net"), MODELS[model])
        assert emit(build_module(schedule(g), target, driver.ENTRY, 2), target)
        pytest.skip(f"compiled only: this host has no {bits}-bit vectors")
    params = train(model, target)
    for name, want in host_params[model].items():
        # another tile or thread split adds in another order: f32 rounding, nothing more
        np.testing.assert_allclose(params[name], want, rtol=2e-4, atol=2e-6, err_msg=f"{cpu} {name}")


@pytest.mark.parametrize("model", MODELS)
def test_aarch64_step_and_pool_compile(model):
    target = Target("aarch64-unknown-linux-gnu", "neoverse-v1", "", 128)
    g = driver.train_graph(driver.load(ROOT / "models" / f"{model}.net"), MODELS[model])
    step = emit(build_module(schedule(g), target, driver.ENTRY, 2), target)
    pool = emit(build_pool(target), target)
    assert step[:4] == pool[:4] == b"\x7fELF"
    assert target.platform.futex == 98  # not x86-64's 202: the pool's futex is the target's
