"""`graphc compile`: writes a model's compiled forms to a directory for people and other tools.

Files: the forward IR (text and JSON), the training step IR, the fused schedule, and the model's
C library (graphc/codegen/capi.py): its LLVM IR, native object, C glue, header, and the shared
library the system C compiler links from the object and the glue.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from graphc import driver
from graphc.autodiff.graphs import inference_graph
from graphc.codegen.capi import build_library
from graphc.codegen.jit import emit, link
from graphc.codegen.target import host_target
from graphc.errors import GraphcError
from graphc.frontend import Program
from graphc.ir.printer import print_graph
from graphc.ir.serialize import dumps
from graphc.passes.pipeline import print_schedule, schedule
from graphc.ir.init import distribution
from graphc.runtime.execute.pool import thread_count

SHARED_SUFFIX = {"darwin": ".dylib", "win32": ".dll"}.get(sys.platform, ".so")


def write_artifacts(prog: Program, out: Path, batch: int | None = None,
                    threads: int | None = None, ranks: int = 1) -> list[str]:
    """Compile `prog`'s training and inference steps and write the artifacts into `out`; returns
    report lines. Raises GraphcError (after writing the rest) when no C compiler can link the
    shared library. With `ranks` > 1 the training step is one rank's of data-parallel training
    (its share of `batch`, gradients summed through the extern slot `allreduce`), and both steps
    take that share."""
    t0 = time.perf_counter()
    target = host_target()
    threads = thread_count(threads)
    step = driver.train_graph(prog, batch, ranks=ranks)
    dim = driver.batch_dim(prog.graph)
    sched = schedule(step)
    infer = schedule(inference_graph(driver.forward(prog, step.dims[dim] if dim else None, training=False)))
    name = prog.graph.name
    inits = {p.value.name: distribution(p) for p in step.params + step.state}
    lr = prog.train.opt_args.get("lr", 0.0)
    lib = build_library(name, sched, infer, step.dims[dim] if dim else None, inits, lr,
                        target, threads, prog.path, ranks)
    linked = link(lib.modules)
    ll = str(linked)  # before emit optimizes it in place
    obj = emit(linked, target, shared=True)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{name}.forward.ir": print_graph(prog.graph),
        f"{name}.forward.json": dumps(prog.graph),
        f"{name}.step.ir": print_graph(step),
        f"{name}.step.json": dumps(step),
        f"{name}.fused.txt": print_schedule(sched),
        f"{name}.ll": ll,
        f"{name}_capi.c": lib.source,
        f"{name}.h": lib.header,
    }
    for fname, text in files.items():
        (out / fname).write_text(text + "\n")
    (out / f"{name}.o").write_bytes(obj)
    shared = f"lib{name}{SHARED_SUFFIX}"
    _link_shared(out / shared, out / f"{name}_capi.c", out / f"{name}.o")
    share = f" per rank of {ranks}" if ranks > 1 else ""
    lines = [f"compiled {name} training and inference steps (batch {step.dims or 'none'}{share}, {threads} "
             f"thread{'s' if threads > 1 else ''}) in {seconds:.2f} s: {len(sched.kernels)} + "
             f"{len(infer.kernels)} kernels"]
    lines += [f"  {out / f}" for f in [*files, f"{name}.o", shared]]
    return lines


def _link_shared(path: Path, glue: Path, obj: Path) -> None:
    """Compile the C glue and link it with the native object into a shared library at `path`."""
    cc = shlex.split(os.environ.get("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        raise GraphcError(f"no C compiler: '{' '.join(cc)}' not found, and linking {path.name} needs "
                          f"one (install gcc or clang, or set CC); the other artifacts are in "
                          f"{path.parent}")
    cmd = [*cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", str(path), str(glue), str(obj),
           "-lm", "-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise GraphcError(f"linking {path.name} failed ({shlex.join(cmd)}):\n{done.stderr.strip()}")
