"""Data-parallel benchmark: N ranks x 1 thread (mpirun) against 1 process x N threads, and the cost
model behind docs/distributed.md's predicted scaling.

Run from the repository root:

    python bench/dist.py               # mlp.net and lenet.net, 7 rounds of 200 steps; every model's step
                                       # (~90 s on 2 cores)
    python bench/dist.py --reps 11     # more rounds: medians steadier on a noisy machine
    python bench/dist.py --nets mlp    # only some of the data-parallel networks (mlp, lenet)
    python bench/dist.py --models mlp,gpt  # only some models in the cost model (names in models/)
    python bench/dist.py --smoke       # 1 round of 5 steps, mlp and lenet only: what the tests run

Part 1, data-parallel on this machine. For each network three configurations train the model's own
step (its train block's batch B, optimizer and schedule) on MNIST: `--ranks` N ranks x 1 thread,
launched by `mpirun -np N` as `graphc train` runs under it (each rank feeds B/N rows of the same
shuffled order, and the step's one allreduce goes through its extern slot to MPI), against one
process x N threads and one process x 1 thread on the whole batch. Each configuration is one
process (or one mpirun job) that stays alive; the rounds alternate between them (ABC CBA ...), and
an idle one waits blocked on its stdin (ranks: rank 0 on stdin, the others polling a barrier
every 2 ms), so the configuration being timed has the machine to itself as far as the benchmark
is concerned. A round is `--steps` steps fed as the trainer feeds them, timed on rank 0; the
table shows the median round as seconds for those steps and scaled to a full MNIST epoch
(60000 // B steps). The allreduce's share: the packed buffer the step hands to the slot (gradients,
loss, metrics and the stop vote, 4 bytes each), and the time spent inside MPI's Allreduce per step
(a timing wrapper around Ranks.allreduce_in_place, bound with Step.bind_extern: it includes
waiting for the slower rank, not the ctypes callback's entry), the mean over the ranks; then the
same Allreduce alone, the ranks in step, as a bandwidth.

Part 2, the cost model (docs/distributed.md). Every model in models/ that has params: its step at
its train block's batch in one process, on 1 thread and on all cores (alternating rounds of
`--model-steps` steps; the median step), and the bytes one allreduce of its data-parallel step
moves (the `pack` node of train_graph(ranks=2)). From these, ring allreduce over N nodes,
2(N-1)/N * bytes / bandwidth + 2(N-1) * latency, and the predicted weak-scaling efficiency
(each node runs the step at the train block's batch, so the global batch grows with N):
compute / (compute + allreduce), with no overlap of the two.

Without mpirun or mpi4py the N-rank rows say why they were skipped and everything else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

STEPS = 200          # steps per timed round
REPS = 7             # rounds per configuration
WARMUP = 20          # untimed steps before the first round (pages faulted in, caches warm)
ALONE_CALLS = 500    # Allreduce calls timed alone
MODEL_STEPS = 20     # steps per round in the cost model
MODEL_REPS = 3
SMOKE = dict(steps=5, reps=1, warmup=2, alone=20, model_steps=2, model_reps=1)
SMOKE_MODELS = ("mlp", "lenet")

NETS = {"mlp": "models/mlp.net", "lenet": "models/lenet.net"}
NODES = (2, 8, 64)
# networks of the cost model: (name, bits per second, latency per message in seconds). The latency
# is the one-way small-message time of an MPI point-to-point send, a typical figure for each
# network: 10 Gb/s Ethernet over TCP ~30 us, 100 Gb/s InfiniBand or RoCE (RDMA) ~3 us.
NETWORKS = (("10 Gb/s", 10e9, 30e-6), ("100 Gb/s", 100e9, 3e-6))


# ---- the worker: one configuration, driven over stdin -----------------------------------------

class Timed:
    """Wraps the function bound to the step's allreduce slot: the seconds spent in it, the calls,
    the bytes of the last call."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seconds, self.calls, self.nbytes = fn, 0.0, 0, 0

    def __call__(self, values: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.fn(values)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.nbytes = values.nbytes


def _command(ranks: Any) -> list[str]:
    """The next command, read by rank 0 from stdin and given to every rank. The other ranks wait
    on a barrier they poll every 2 ms rather than in a blocking MPI call, which would spin a core
    while another configuration is being timed."""
    line = sys.stdin.readline() if ranks is None or ranks.rank == 0 else ""
    if ranks is not None:
        req = ranks.comm.Ibarrier()
        while not req.Test():
            time.sleep(0.002)
        line = ranks.comm.bcast(line, root=0)
    return line.split() or ["quit"]


def worker(model: str, threads: int, n: int, warmup: int) -> None:
    """One configuration: `n` ranks (under mpirun) or one process, on `threads` threads each; after
    `warmup` steps it says it is ready, then answers each command on stdin with a JSON line."""
    from graphc.autodiff.data_parallel import SLOT, VOTE
    from graphc.autodiff.lr_schedule import horizon
    from graphc.driver import load, train_graph
    from graphc.ir.graph import LR
    from graphc.runtime.train.data import load_dataset
    from graphc.runtime.train.distributed import launched
    from graphc.runtime.train.feeds import bind_split, feeder, samples
    from graphc.runtime.train.trainer import TrainingStep, model_arrays

    ranks = launched() if n > 1 else None
    if n > 1 and (ranks is None or ranks.size != n):
        sys.exit(f"worker for {n} ranks started as {ranks.size if ranks else 1} process(es)")
    prog = load(ROOT / model)
    B, seed = prog.train.batch, prog.train.seed
    g = train_graph(prog, B, ranks=n)
    trained = TrainingStep.build(g, model_arrays(prog, g, seed), threads, ranks=ranks)
    step = trained.compiled.step
    timer = Timed(ranks.allreduce_in_place) if ranks else None
    if timer:
        step.bind_extern(SLOT, timer)
    data = load_dataset(prog.train.data)
    fed = bind_split(prog, g, data, "train", {})
    n_train = samples(fed)
    per_epoch = n_train // B
    for name, v in {LR: prog.train.opt_args["lr"], **horizon(per_epoch, prog.train.epochs)}.items():
        if name in step.inputs:
            step.inputs[name][...] = v
    feed = feeder(step, fed)
    rows = B // n
    first = rows * (ranks.rank if ranks else 0)
    loss_key = prog.graph.loss_name()
    rng = np.random.default_rng(seed + 1)  # the same on every rank, as the trainer's

    def steps(k: int) -> dict[str, Any]:
        order = rng.permutation(n_train)
        if timer:
            timer.seconds, timer.calls = 0.0, 0
        losses = []
        t0 = time.perf_counter()
        for i in range(k):
            j = (i * B) % (n_train - B + 1)
            feed(order[j + first:j + first + rows])
            if ranks:
                step.inputs[VOTE][...] = 0.0
            losses.append(float(step.run()[loss_key]))
        out = {"seconds": time.perf_counter() - t0, "loss": float(np.mean(losses))}
        if timer:
            out["allreduce_s"] = timer.seconds
        return out

    def reply(out: dict[str, Any]) -> None:
        if ranks:  # rank 0's figures, and each rank's time in the allreduce
            per_rank = ranks.comm.gather(out.get("allreduce_s"), root=0)
            if ranks.rank:
                return
            out["allreduce_s"] = per_rank
        print(json.dumps(out), flush=True)

    steps(max(1, warmup))  # at least one: the allreduce's bytes are those of its last call
    if not ranks or ranks.rank == 0:
        print(json.dumps({"ready": True, "batch": B, "n_train": n_train,
                          "bytes": timer.nbytes if timer else 0}), flush=True)
    while True:
        cmd = _command(ranks)
        if cmd[0] == "run":
            reply(steps(int(cmd[1])))
        elif cmd[0] == "alone" and ranks and timer:
            values = np.zeros(timer.nbytes // 4, np.float32)
            times = []
            for _ in range(int(cmd[1])):
                ranks.comm.Barrier()
                t0 = time.perf_counter()
                ranks.allreduce_in_place(values)
                times.append(time.perf_counter() - t0)
            reply({"alone_s": statistics.median(times)})
        else:
            return


# ---- the driver --------------------------------------------------------------------------------

@dataclass
class Config:
    label: str
    ranks: int
    threads: int


class Worker:
    """One configuration's process (or mpirun job), answering a JSON line per command."""

    def __init__(self, net: str, cfg: Config, warmup: int) -> None:
        self.cfg = cfg
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", NETS[net],
                "--threads", str(cfg.threads), "--ranks", str(cfg.ranks), "--warmup", str(warmup)]
        env = dict(os.environ)
        if cfg.ranks > 1:
            argv = ["mpirun", "-np", str(cfg.ranks), "--oversubscribe"] + argv
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        self.err = tempfile.TemporaryFile("w+")
        self.p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        said = []  # what else it printed (mpirun's own notices go to either stream)
        while True:
            line = self.p.stdout.readline()
            if not line:
                self.err.seek(0)
                raise RuntimeError(f"{self.cfg.label} ended (exit {self.p.wait()}): "
                                   f"{(''.join(said) + self.err.read())[-3000:].strip() or 'nothing printed'}")
            if line.startswith("{"):
                return json.loads(line)
            said.append(line)

    def ask(self, *cmd: object) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(" ".join(map(str, cmd)) + "\n")
        self.p.stdin.flush()
        return self._answer()

    def close(self) -> None:
        try:
            if self.p.poll() is None:
                self.ask_quit()
            self.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()

    def ask_quit(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("quit\n")
        self.p.stdin.close()


def mpi_missing() -> str | None:
    """Why an N-rank run cannot start here, or None."""
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install 'graphc[mpi]')"
    return None


def mpi_version() -> str:
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30).stdout
        import mpi4py
        return f"{out.splitlines()[0].strip()}, mpi4py {mpi4py.__version__}"
    except (OSError, IndexError, ImportError, subprocess.TimeoutExpired):
        return "unknown MPI"


def bench_net(net: str, configs: list[Config], a: argparse.Namespace) -> list[dict[str, Any]]:
    workers = []
    try:
        for cfg in configs:  # one after another: a worker's setup does not slow another's
            workers.append(Worker(net, cfg, a.warmup))
        results: dict[str, list[dict[str, Any]]] = {w.cfg.label: [] for w in workers}
        for r in range(a.reps):
            for w in (workers if r % 2 == 0 else workers[::-1]):
                results[w.cfg.label].append(w.ask("run", a.steps))
        alone = {w.cfg.label: w.ask("alone", a.alone)["alone_s"] for w in workers if w.cfg.ranks > 1}
    finally:
        for w in workers:
            w.close()
    rows = []
    for w in workers:
        rs = results[w.cfg.label]
        s = statistics.median(r["seconds"] for r in rs)
        row = {"net": f"{Path(NETS[net]).name} b{w.info['batch']}", "config": w.cfg.label,
               "seconds": s, "epoch": s / a.steps * (w.info["n_train"] // w.info["batch"]),
               "loss": rs[-1]["loss"], "bytes": w.info["bytes"]}
        if w.cfg.ranks > 1:
            per_step = statistics.median(statistics.mean(r["allreduce_s"]) for r in rs) / a.steps
            row |= {"allreduce_us": per_step * 1e6, "share": per_step / (s / a.steps),
                    "alone_us": alone[w.cfg.label] * 1e6}
        rows.append(row)
    return rows


def print_dist(rows: list[dict[str, Any]], skipped: str | None, failed: dict[str, str], n: int,
               a: argparse.Namespace) -> None:
    print(f"\ndata-parallel on this machine: median of {a.reps} round{'s' * (a.reps > 1)} of {a.steps} "
          f"steps, configurations alternating; s/MNIST epoch = s/step x 60000 // batch; allreduce: "
          f"bytes per step (the packed buffer), us per step inside MPI's Allreduce (mean over the ranks, "
          f"waiting for the slower one included), % of the step; alone: the same Allreduce with the "
          f"ranks in step")
    print(f"{'network':14} {'configuration':20} {'s/' + str(a.steps) + ' steps':>12} {'s/MNIST epoch':>14} "
          f"{'x 1 proc':>9} {'loss':>7} {'bytes/step':>11} {'us/step':>8} {'% step':>7} {'alone us':>9} "
          f"{'GB/s':>6}")
    by_net: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_net.setdefault(r["net"], []).append(r)
    for net, rs in by_net.items():
        base = next((r for r in rs if r["config"].startswith(f"1 process x {n}")), rs[0])
        for r in rs:
            tail = ""
            if "allreduce_us" in r:
                gbs = r["bytes"] / (r["alone_us"] * 1e-6) / 1e9
                tail = (f" {r['bytes']:>11d} {r['allreduce_us']:>8.1f} {100 * r['share']:>6.1f}% "
                        f"{r['alone_us']:>9.1f} {gbs:>6.2f}")
            print(f"{net:14} {r['config']:20} {r['seconds']:>12.4f} {r['epoch']:>14.2f} "
                  f"{base['seconds'] / r['seconds']:>9.2f} {r['loss']:>7.4f}{tail}")
        why = skipped or next((v for k, v in failed.items() if net.startswith(Path(k).name)), None)
        if why:
            print(f"skipped {net} {n} ranks x 1 thread: {why}")
    print("x 1 proc: the speed relative to 1 process x N threads (above 1: faster)")


# ---- the cost model ------------------------------------------------------------------------------

def model_cost(path: Path, threads: list[int], a: argparse.Namespace, datasets: dict[str, Any]) -> dict[str, Any]:
    """One model's step at its train block's batch: the median seconds per step on each thread
    count (rounds alternating) and the bytes its data-parallel step's allreduce moves."""
    from graphc.autodiff.lr_schedule import horizon
    from graphc.driver import compile_graph, load, train_graph
    from graphc.ir.graph import LR
    from graphc.ir.graph import NP_DTYPES
    from graphc.runtime.train.data import load_dataset
    from graphc.runtime.train.feeds import bind_split, feeder, samples
    from graphc.runtime.train.trainer import model_arrays

    prog = load(path)
    B = prog.train.batch
    g = train_graph(prog, B)
    if not g.params:
        raise LookupError("no params to train")
    if prog.train.data is None:
        raise LookupError("no data in its train block")
    even = B - B % 2
    packed = next(n.out for n in train_graph(prog, even, ranks=2).nodes if n.op == "pack")
    nbytes = packed.type.size() * np.dtype(NP_DTYPES[packed.dtype]).itemsize
    if prog.train.data not in datasets:
        datasets[prog.train.data] = load_dataset(prog.train.data)
    fed = bind_split(prog, g, datasets[prog.train.data], "train", {})
    n_train = samples(fed)
    params = model_arrays(prog, g, prog.train.seed)
    runs = []
    for t in threads:
        step = compile_graph(g, {k: v.copy() for k, v in params.items()}, threads=t).step
        for name, v in {LR: prog.train.opt_args["lr"], **horizon(max(1, n_train // B), prog.train.epochs)}.items():
            if name in step.inputs:
                step.inputs[name][...] = v
        runs.append((t, step, feeder(step, fed)))
    rng = np.random.default_rng(0)
    loss_key = prog.graph.loss_name()
    times: dict[int, list[float]] = {t: [] for t in threads}
    for r in range(a.model_reps + 1):  # the first round warms up
        for t, step, feed in (runs if r % 2 == 0 else runs[::-1]):
            for _ in range(a.model_steps):
                feed(rng.integers(n_train, size=B))
                t0 = time.perf_counter()
                float(step.run()[loss_key])
                if r:
                    times[t].append(time.perf_counter() - t0)
    return {"model": path.name, "batch": B, "bytes": nbytes, "data": prog.train.data,
            "ms": {t: statistics.median(v) * 1e3 for t, v in times.items()}}


def ring_seconds(nbytes: float, nodes: int, bits_per_s: float, latency: float) -> float:
    """Ring allreduce of `nbytes` over `nodes`: reduce-scatter then allgather, 2(N-1) steps each
    sending bytes/N."""
    return 2 * (nodes - 1) / nodes * nbytes * 8 / bits_per_s + 2 * (nodes - 1) * latency


def print_costs(costs: list[dict[str, Any]], threads: list[int]) -> None:
    t_all = threads[-1]
    print(f"\ncost model: one step at the train block's batch, one process (median of the timed steps); "
          f"bytes: what one allreduce of its data-parallel step moves")
    print(f"{'model':14} {'batch':>5} " + " ".join(f"{str(t) + ' thr ms':>10}" for t in threads)
          + f" {'bytes/step':>11}")
    for c in costs:
        print(f"{c['model']:14} {c['batch']:>5} " + " ".join(f"{c['ms'][t]:>10.3f}" for t in threads)
              + f" {c['bytes']:>11d}")
    print(f"\npredicted weak-scaling efficiency, compute / (compute + ring allreduce), no overlap; "
          f"compute = the {t_all}-thread step above on every node (per-node batch = the train block's); "
          + "; ".join(f"{name}: latency {lat * 1e6:g} us" for name, _, lat in NETWORKS))
    head = " ".join(f"{name + ' N=' + str(n):>15}" for name, _, _ in NETWORKS for n in NODES)
    print(f"{'model':14} {head}")
    for c in costs:
        comp = c["ms"][t_all] * 1e-3
        cells = []
        for _, bw, lat in NETWORKS:
            for n in NODES:
                ar = ring_seconds(c["bytes"], n, bw, lat)
                cells.append(f"{100 * comp / (comp + ar):>5.1f}% {ar * 1e3:>6.2f}ms")
        print(f"{c['model']:14} " + " ".join(f"{x:>15}" for x in cells))
    print("each cell: efficiency, then the allreduce's time per step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=REPS, help=f"timed rounds per configuration (default {REPS})")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps per round (default {STEPS})")
    ap.add_argument("--ranks", type=int, default=2, help="ranks (and threads of the 1-process run; default 2)")
    ap.add_argument("--nets", default=",".join(NETS), help="data-parallel networks: " + ", ".join(NETS))
    ap.add_argument("--models", default=None,
                    help="cost-model models, comma-separated names in models/ (default: all; 'none': skip)")
    ap.add_argument("--model-steps", type=int, default=MODEL_STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--model-reps", type=int, default=MODEL_REPS, help=argparse.SUPPRESS)
    ap.add_argument("--alone", type=int, default=ALONE_CALLS, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=WARMUP, help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="1 round of 5 steps, cost model of mlp and lenet")
    ap.add_argument("--worker", metavar="MODEL", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.threads, a.ranks, a.warmup)
        return
    if a.smoke:
        for k, v in SMOKE.items():
            setattr(a, k, v)
    nets = [s for s in re.split(r"[,\s]+", a.nets) if s]
    if bad := [s for s in nets if s not in NETS]:
        ap.error(f"unknown network {bad[0]} (choose from {', '.join(NETS)})")
    all_models = sorted(p.stem for p in (ROOT / "models").glob("*.net"))
    chosen = (list(SMOKE_MODELS) if a.smoke and a.models is None else all_models if a.models is None
              else [] if a.models == "none" else [s for s in re.split(r"[,\s]+", a.models) if s])
    if bad := [s for s in chosen if s not in all_models]:
        ap.error(f"unknown model {bad[0]} (models/: {', '.join(all_models)})")

    sys.path.insert(0, str(ROOT / "bench"))
    from run import cores, cpu_name  # noqa: E402  (bench/run.py: the machine)

    n = a.ranks
    skipped = mpi_missing()
    print(f"CPU: {cpu_name()}, {cores()} cores; {'MPI: ' + mpi_version() if not skipped else skipped}",
          flush=True)
    configs = ([] if skipped else [Config(f"{n} ranks x 1 thread", n, 1)]) + [
        Config(f"1 process x {n} threads", 1, n), Config("1 process x 1 thread", 1, 1)]
    rows = []
    failed: dict[str, str] = {}  # network -> why its ranks did not run
    for net in nets:
        print(f"{NETS[net]}: {', '.join(c.label for c in configs)} ...", flush=True)
        try:
            rows += bench_net(net, configs, a)
        except RuntimeError as e:  # on this shared machine an mpirun job has ended unexplained: again,
            print(f"{NETS[net]}: again, after {e}", flush=True)  # then without the ranks, saying why
            try:
                rows += bench_net(net, configs, a)
            except RuntimeError as again:
                failed[NETS[net]] = str(again).replace("\n", " ")
                rows += bench_net(net, [c for c in configs if c.ranks == 1], a)
    if nets:
        print_dist(rows, skipped, failed, n, a)

    threads = sorted({1, cores()})
    costs = []
    datasets: dict[str, Any] = {}
    for name in chosen:
        print(f"cost model: models/{name}.net ...", flush=True)
        try:
            costs.append(model_cost(ROOT / "models" / f"{name}.net", threads, a, datasets))
        except LookupError as e:
            print(f"skipped {name}.net: {e}")
    if costs:
        print_costs(costs, threads)


if __name__ == "__main__":
    main()
