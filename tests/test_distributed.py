"""Data-parallel training (graphc.autodiff.data_parallel, runtime/train/distributed.py).

The step itself is checked in one process, its ranks run as threads whose allreduce is a sum
between them: a rank's step on its share of the batch equals one process's step on the whole
batch, and the memory plan writes the gradients into the allreduce's buffer in place. Then
`mpirun -np 2 graphc train` against one process (skipped, saying why, where Open MPI's mpirun or
mpi4py is missing; .ci/run installs both): the same params, a killed rank ending the job and a
resume reproducing an uninterrupted run bit for bit, a NaN on one rank stopping every rank, a
Ctrl-C on one rank stopping all of them after the same step.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import GRAPHC
from graphc import driver
from graphc.autodiff.data_parallel import SLOT, VOTE, VOTES, for_rank
from graphc.errors import GraphcError
from graphc.frontend import load_source
from graphc.passes.fuse import KernelKind
from graphc.passes.pipeline import schedule
from graphc.runtime.train.trainer import model_arrays

ROOT = Path(__file__).resolve().parent.parent

NET = """net small
dim B
input x : f64[B, 12]
input y : i32[B]
param W1 : f64[12, 7] = he_normal()
param b1 : f64[7] = zeros()
param W2 : f64[7, 5] = xavier_uniform()
logits = relu(x @ W1 + b1) @ W2
loss = softmax_cross_entropy(logits, y) + 0.01 * mean(W2 * W2)
metric accuracy = accuracy(logits, y)
train { optimizer = adam(lr=0.01) batch = 24 epochs = 1 seed = 3 }
"""


def _threads_as_ranks(steps: list) -> None:
    """Binds each step's allreduce to a sum with the others', the ranks being threads."""
    parts: list = [None] * len(steps)
    meet = threading.Barrier(len(steps))

    def bind(r: int) -> None:
        def allreduce(values: np.ndarray) -> None:
            parts[r] = values
            meet.wait()
            if r == 0:
                total = sum(parts[1:], parts[0].copy())
                for p in parts:
                    p[...] = total
            meet.wait()
        steps[r].bind_extern(SLOT, allreduce)

    for r in range(len(steps)):
        bind(r)


def _run_ranks(steps: list, feeds: list[dict]) -> list[dict]:
    outs: list = [None] * len(steps)

    def go(r: int) -> None:
        outs[r] = {k: np.copy(v) for k, v in steps[r].run(**feeds[r]).items()}

    threads = [threading.Thread(target=go, args=(r,)) for r in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outs


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_ranks_step_on_its_share_equals_one_process_step_on_the_batch(ranks):
    prog = load_source(NET, "small.net")
    batch = prog.train.batch
    one_graph = driver.train_graph(prog)
    init = model_arrays(prog, one_graph, 0)
    one = driver.compile_graph(one_graph, {k: v.copy() for k, v in init.items()}, threads=1).step
    dp = driver.train_graph(prog, ranks=ranks)
    steps = [driver.compile_graph(for_rank(dp, r), {k: v.copy() for k, v in init.items()}, threads=1).step
             for r in range(ranks)]
    _threads_as_ranks(steps)
    rng = np.random.default_rng(0)
    share = batch // ranks
    for _ in range(30):
        x, y = rng.normal(size=(batch, 12)), rng.integers(0, 5, batch).astype(np.int32)
        want = {k: np.copy(v) for k, v in one.run(x=x, y=y, lr=0.01).items()}
        outs = _run_ranks(steps, [{"x": x[r * share:(r + 1) * share], "y": y[r * share:(r + 1) * share],
                                   "lr": 0.01} for r in range(ranks)])
        for out in outs:  # the loss and metrics are the whole batch's
            np.testing.assert_allclose(out["loss"], want["loss"], rtol=1e-13)
            np.testing.assert_allclose(out["accuracy"], want["accuracy"], rtol=1e-13)
            assert out[VOTES] == 0
    for name, w in one.params.items():
        np.testing.assert_allclose(steps[0].params[name], w, rtol=1e-11, atol=1e-13)
        for s in steps[1:]:  # every rank applies the same update: bit for bit
            np.testing.assert_array_equal(s.params[name], steps[0].params[name])


def test_the_stop_vote_is_summed_over_the_ranks():
    prog = load_source(NET, "small.net")
    dp = driver.train_graph(prog, ranks=2)
    init = model_arrays(prog, dp, 0)
    steps = [driver.compile_graph(dp, {k: v.copy() for k, v in init.items()}, threads=1).step for _ in range(2)]
    _threads_as_ranks(steps)
    x, y = np.ones((12, 12)), np.zeros(12, np.int32)
    outs = _run_ranks(steps, [{"x": x, "y": y, "lr": 0.0, VOTE: v} for v in (0.0, 1.0)])
    assert [float(o[VOTES]) for o in outs] == [1.0, 1.0]


def test_the_gradients_are_written_into_the_allreduce_buffer_and_reduced_in_place():
    prog = load_source(NET, "small.net")
    s = schedule(driver.train_graph(prog, ranks=2))
    (pack,) = [k for k in s.kernels if k.kind is KernelKind.PACK]
    (call,) = [k for k in s.kernels if k.kind is KernelKind.EXTERN]
    buf, start = s.plan.place[pack.nodes[0].out]
    end = start + pack.nodes[0].out.type.size() * 8
    grads = [v for v in pack.nodes[0].inputs if v.name.startswith("d.")]
    assert len(grads) == 3
    for v in grads:  # where the GEMM or reduction producing it writes: inside the buffer
        assert s.plan.place[v][0] == buf and start <= s.plan.place[v][1] < end, v.name
    assert s.plan.place[call.nodes[0].out] == (buf, start)  # no copy before the call
    # only the vote, an input, is copied in; the loss and the metric are intermediates now
    assert [v.name for v in pack.nodes[0].inputs if v not in s.plan.aliased] == [VOTE]


def test_each_rank_draws_its_own_dropout_masks_from_its_rank():
    prog = load_source(NET.replace("relu(x @ W1 + b1)", "dropout(relu(x @ W1 + b1), p=0.5)"), "small.net")
    dp = driver.train_graph(prog, ranks=2)
    seeds = [[n.attrs["seed"] for n in for_rank(dp, r).nodes if "seed" in n.attrs] for r in (0, 1, 0)]
    assert seeds[0] and seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    prog = load_source(NET, "small.net")
    with pytest.raises(GraphcError, match="a batch of 24 does not split evenly over 5 ranks"):
        driver.train_graph(prog, ranks=5)


def test_an_mpi_launch_without_mpi4py_says_what_to_install(monkeypatch):
    from graphc.runtime.train import distributed
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(GraphcError, match=r"one of 2 started by an MPI launcher, but mpi4py is not installed"):
        distributed.launched()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert distributed.launched() is None


# --- mpirun -np 2 graphc train ---------------------------------------------------------------------

def _mpi_missing() -> str | None:
    if shutil.which("mpirun") is None:
        return "Open MPI's mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        from mpi4py import MPI  # noqa: F401
    except ImportError as e:
        return f"mpi4py cannot be imported ({e}; pip install 'graphc[mpi]')"
    return None


mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def _mpirun(n: int, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["mpirun", "-np", str(n), *GRAPHC, *args], capture_output=True, text=True,
                          env=ENV, timeout=kw.pop("timeout", 300), cwd=ROOT, **kw)


def _train(*args: str, ranks: int = 1) -> subprocess.CompletedProcess:
    if ranks > 1:
        return _mpirun(ranks, "train", *args, "--no-progress")
    return subprocess.run([*GRAPHC, "train", *args, "--no-progress", "--threads", "1"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def _params(d: Path, name: str = "params.npz") -> dict[str, np.ndarray]:
    with np.load(d / name) as f:
        return {k: f[k] for k in f.files if k != "__meta__"}


def _accuracy(out: str) -> float:
    return float(re.findall(r"test_accuracy ([0-9.]+)", out)[-1])


@mpi
def test_two_ranks_train_the_params_one_process_trains_in_f64(tmp_path):
    """In f64 the ranks' sums in another order are the only difference: 300 steps of the MLP agree to
    1e-9 (f32's rounding differences, as small at first, grow chaotically over hundreds of SGD
    steps: see the f32 test)."""
    net = tmp_path / "mlp64.net"
    net.write_text((ROOT / "models/mlp.net").read_text().replace("f32", "f64"))
    args = [str(net), "--epochs", "1", "--steps-per-epoch", "300"]
    one, two = _train(*args, "--out", str(tmp_path / "one")), _train(*args, "--out", str(tmp_path / "two"), ranks=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-9, err_msg=k)
    assert two.stdout.count("epoch 1:") == 1  # rank 0 alone reports
    assert abs(_accuracy(one.stdout) - _accuracy(two.stdout)) <= 1e-4


@pytest.mark.parametrize("model", ["mlp.net", "lenet.net"])
@mpi
def test_two_ranks_reach_one_process_accuracy_in_f32(tmp_path, model):
    """f32, 300 steps: the params agree to rounding at first (1e-6 after 20 steps), and the test
    accuracy after 300 steps within 1% (their rounding differences grow over the steps)."""
    for steps, close in ((20, 1e-6), (300, None)):
        args = [f"models/{model}", "--epochs", "1", "--steps-per-epoch", str(steps)]
        one = _train(*args, "--out", str(tmp_path / f"one{steps}"))
        two = _train(*args, "--out", str(tmp_path / f"two{steps}"), ranks=2)
        assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
        if close:
            a, b = _params(tmp_path / f"one{steps}"), _params(tmp_path / f"two{steps}")
            assert max(float(np.abs(a[k] - b[k]).max()) for k in a) <= close
        else:
            assert _accuracy(two.stdout) >= 0.9
            assert abs(_accuracy(one.stdout) - _accuracy(two.stdout)) <= 0.01, (one.stdout, two.stdout)


def _rank_pids(job: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the processes mpirun `job` started (its children)."""
    pids = {}
    for p in Path("/proc").iterdir():
        try:
            if not p.name.isdigit() or int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) != job.pid:
                continue
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        for e in env:
            if e.startswith(b"OMPI_COMM_WORLD_RANK="):
                pids[int(e.split(b"=")[1])] = int(p.name)
    return pids


def _wait_for(path: Path, job: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


@mpi
def test_a_killed_rank_ends_the_job_and_resume_reproduces_an_uninterrupted_run(tmp_path):
    args = ["models/mlp_bn.net", "--epochs", "3", "--steps-per-epoch", "40", "--no-progress"]
    whole = _mpirun(2, "train", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "run"
    job = subprocess.Popen(["mpirun", "-np", "2", *GRAPHC, "train", *args, "--out", str(run)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    _wait_for(run / "checkpoint.npz", job)  # epoch 1 is done
    os.kill(_rank_pids(job)[1], signal.SIGKILL)
    _, err = job.communicate(timeout=60)  # the job ends: no rank waits forever
    assert job.returncode != 0
    resumed = _mpirun(2, "train", *args, "--out", str(run), "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = _params(tmp_path / "whole"), _params(run)
    for k in a:  # batch norm's running statistics too (rank 0's)
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    one = _train(*args[:-1], "--resume", str(run))
    assert one.returncode != 0 and "written by a run of 2 processes, but this run has 1" in one.stderr


@mpi
def test_a_nan_on_one_rank_stops_every_rank_and_writes_nothing_from_it(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype(np.float32)
    y = rng.integers(0, 5, 256).astype(np.int32)
    x[37] = 3e38  # finite, but its activations overflow: one rank's loss becomes inf, then NaN
    np.savez(tmp_path / "data.npz", x=x, y=y)
    net = tmp_path / "small.net"
    net.write_text(NET.replace("f64", "f32").replace("seed = 3 }", f'seed = 3 data = "{tmp_path / "data.npz"}" }}'))
    out = _mpirun(2, "train", str(net), "--epochs", "3", "--test", "0.25", "--out", str(tmp_path / "run"),
                  "--no-progress")
    assert out.returncode == 2, out.stderr
    assert re.search(r"loss became (nan|inf) at epoch \d+, step \d+; training stopped", out.stderr), out.stderr
    assert out.stderr.count("training stopped") == 1  # one message, from rank 0
    assert not (tmp_path / "run/params.npz").exists()


@pytest.mark.parametrize("who", ["mpirun", "rank 1"])
@mpi
def test_ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint(tmp_path, who):
    """Ctrl-C at mpirun (which sends every rank SIGTERM) or at one rank: the ranks vote inside the
    step, every rank stops after the same one, rank 0 saves and says so once, and the run resumes."""
    run = tmp_path / "run"
    args = ["models/mlp.net", "--epochs", "1", "--steps-per-epoch", "8000", "--no-progress", "--out", str(run)]
    job = subprocess.Popen(["mpirun", "-np", "2", *GRAPHC, "train", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
    _wait_for(run / ".lock", job)
    time.sleep(2)  # training
    os.kill(job.pid if who == "mpirun" else _rank_pids(job)[1], signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0, err
    assert err.count("interrupted at epoch 1") == 1, err
    assert "checkpoint saved" in err and "continue with --resume" in err
    resumed = _mpirun(2, "train", *args, "--resume", str(run))
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr


def test_graphc_ir_shows_one_ranks_step(capsys):
    from graphc.cli import main
    assert main(["ir", str(ROOT / "models/mlp.net"), "--grad", "--ranks", "2"]) == 0
    out = capsys.readouterr().out
    assert "graph mlp.step[B=64](x: f32[64,784]" in out  # batch 128 over 2 ranks
    assert re.search(r"= pack d\.fc1\.W, .*stop_vote", out) and "extern_call" in out and "[slot=allreduce]" in out
