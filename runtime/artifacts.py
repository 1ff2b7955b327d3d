"""`graphc compile`: writes a model's compiled forms to a directory for people and other tools.

Files: the forward IR (text and JSON), the training step IR, the fused schedule, the LLVM IR and
the native object of the training step.
"""

from __future__ import annotations

import time
from pathlib import Path

from graphc import driver
from graphc.codegen.jit import emit
from graphc.codegen.module import build_module
from graphc.codegen.target import host_target
from graphc.frontend import Program
from graphc.ir.printer import print_graph
from graphc.ir.serialize import dumps
from graphc.passes.pipeline import print_schedule, schedule


def write_artifacts(prog: Program, out: Path, batch: int | None = None) -> list[str]:
    """Compile `prog`'s training step and write its artifacts into `out`; returns report lines."""
    t0 = time.perf_counter()
    target = host_target()
    step = driver.train_graph(prog, batch)
    sched = schedule(step)
    module = build_module(sched, target, driver.ENTRY)
    obj = emit(module, target)
    seconds = time.perf_counter() - t0
    name = prog.graph.name
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{name}.forward.ir": print_graph(prog.graph),
        f"{name}.forward.json": dumps(prog.graph),
        f"{name}.step.ir": print_graph(step),
        f"{name}.step.json": dumps(step),
        f"{name}.fused.txt": print_schedule(sched),
        f"{name}.ll": str(module),
    }
    for fname, text in files.items():
        (out / fname).write_text(text + "\n")
    (out / f"{name}.o").write_bytes(obj)
    lines = [f"compiled {name} training step (batch {step.dims}) in {seconds:.2f} s: "
             f"{len(sched.kernels)} kernels, arena {sched.plan.arena_bytes} bytes"]
    lines += [f"  {out / f}" for f in [*files, f"{name}.o"]]
    return lines
