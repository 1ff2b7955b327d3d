"""Cold compile time by stage, as models grow: MLPs of 2..128 dense layers, GPTs of 4..16 blocks.

Run from the repository root:

    python bench/compile_time.py              # the table, median of 3 runs per model
    python bench/compile_time.py --reps 1     # one run each (quicker, noisier)
    python bench/compile_time.py --only gpt   # only the models whose name starts so (gpt, mlp-128)

Each model compiles its training step from source, with no object cache, through the stages the
driver chains: frontend (parse and lower the .net text), autodiff (the training graph), passes
(decompose ... fuse, memory plan), codegen (the LLVM IR module) and LLVM (optimize and emit the
object). Loading the object and graphc's own helper modules (the worker pool, cached separately)
are left out. The MLP is width 64 with a ReLU after every layer but the last; the GPT is
models/gpt.net with its block lines repeated.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

from graphc import driver
from graphc.codegen.backend import Build, CpuBackend
from graphc.codegen.jit import emit
from graphc.frontend import load_source
from graphc.passes.pipeline import schedule
from graphc.runtime.execute.pool import thread_count

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["frontend", "autodiff", "passes", "codegen", "llvm"]


def mlp(layers: int) -> str:
    """An MLP of `layers` dense layers of width 64."""
    body = [f"h{i + 1} = dense(h{i}, units=64) as fc{i + 1}" for i in range(layers - 1)]
    return "\n".join([
        "net mlp", "dim B", "input h0 : f32[B, 64]", "input y : i32[B] nograd",
        "layer dense(h: f32[B, I], units: int, act: fn = relu) -> f32[B, units] {",
        "  param W : f32[I, units] = he_normal()", "  param b : f32[units] = zeros()",
        "  return act(h @ W + b)", "}",
        *body, f"logits = dense(h{layers - 1}, units=10, act=id) as out",
        "loss = softmax_cross_entropy(logits, y)",
        "train { optimizer = sgd(lr=0.05, momentum=0.9)  batch = 32  epochs = 1  seed = 0 }", ""])


def gpt(blocks: int) -> str:
    """models/gpt.net with `blocks` transformer blocks."""
    text = (ROOT / "models" / "gpt.net").read_text()
    last = re.findall(r"(?m)^h(\d+) = block", text)[-1]
    text = text.replace(f"(h{last})", f"(h{blocks})")  # what reads the last block's output
    chain = "".join(f"h{i + 1} = block(h{i}) as b{i + 1}\n" for i in range(blocks))
    return re.sub(r"(?m)^h1 = block.*\n(?:^h\d+ = block.*\n)*", chain, text)


def run_once(source: str, name: str, threads: int) -> dict[str, float]:
    """Seconds per stage of one cold compile of `source`, and their total."""
    backend = CpuBackend()
    times: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage], clock = now - clock, now

    prog = load_source(source, f"<{name}>")
    lap("frontend")
    g = driver.train_graph(prog)
    lap("autodiff")
    sched = schedule(g)
    lap("passes")
    module = backend.module(sched, driver.ENTRY, Build(threads))
    lap("codegen")
    emit(module, backend.target)
    lap("llvm")
    times["total"] = sum(times.values())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="runs per model; the table shows medians")
    ap.add_argument("--only", default="", help="only the models whose name starts with this")
    a = ap.parse_args()
    models = [(f"mlp-{n}", "mlp", n, mlp(n)) for n in (2, 8, 32, 128)]
    models += [(f"gpt-{n}", "gpt", n, gpt(n)) for n in (4, 8, 16)]
    threads = thread_count(None)
    print(f"cold compile, seconds per stage (median of {a.reps}), {threads} threads")
    print(f"{'model':8} {'size':>4} " + " ".join(f"{s:>8}" for s in STAGES) + f" {'total':>8}")
    for name, kind, size, source in models:
        if not name.startswith(a.only):
            continue
        runs = [run_once(source, name, threads) for _ in range(a.reps)]
        med = {s: statistics.median(r[s] for r in runs) for s in [*STAGES, "total"]}
        print(f"{kind:8} {size:>4} " + " ".join(f"{med[s]:8.2f}" for s in [*STAGES, "total"]), flush=True)


if __name__ == "__main__":
    main()
