"""The profiling build: every kernel that runs is timed, and the GEMMs dominate an MLP step."""

from __future__ import annotations

import pytest

from graphc import driver
from graphc.cli import main
from graphc.runtime.train.profile import profile_step

pytestmark = pytest.mark.slow  # the full tier: README's test command runs it, `-m "not slow"` skips it


def test_kernel_times_account_for_the_step(capsys):
    prog = driver.load("models/lenet.net")
    wall, kernels = profile_step(prog, batch=5, steps=3, threads=1)
    sched = driver.compile_graph(driver.train_graph(prog, 5), threads=1).schedule
    runs = {i for i, k in enumerate(sched.kernels) if k.kind.value != "view"}
    assert {k.index for k in kernels} == runs  # every kernel that does work was timed
    assert all(k.seconds > 0 for k in kernels)
    assert abs(sum(k.seconds for k in kernels) - wall) < 1e-3 * wall
    # at batch 512 the GEMMs (~400M multiply-adds) outweigh everything else by far
    _, kernels = profile_step(driver.load("models/mlp.net"), batch=512, steps=3, threads=1)
    gemm = sum(k.seconds for k in kernels if k.kind == "contract")
    assert gemm > 0.6 * sum(k.seconds for k in kernels), kernels
    # each kernel's work, for its rate: a GEMM's FLOPs (x·W1: 2·512·784·256), a loop kernel's bytes
    assert all((k.flops > 0) == (k.kind == "contract") and (k.bytes > 0) == (k.kind != "contract") for k in kernels)
    assert 2.0 * 512 * 784 * 256 in {k.flops for k in kernels}
    update = next(k for k in kernels if k.kind == "elementwise" and k.space == (784, 256))
    assert update.bytes >= 3 * 784 * 256 * 4  # reads W and dW, writes W (momentum: more)
    assert main(["profile", "models/mlp.net", "--batch", "9", "--steps", "2", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mlp: ") and len(out) == 2 + 3 and "matmul" in "".join(out)
    assert "GEMMs" in out[0] and "GFLOP/s" in out[0] and "GB/s" in out[0]
    assert all("GFLOP/s" in line or "GB/s" in line for line in out[2:])  # each kernel's rate
