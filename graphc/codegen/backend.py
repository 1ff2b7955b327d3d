"""The backend seam: what turns a Schedule into native code a machine runs.

A backend turns a schedule into the module it generates for its target (`module`, which
`graphc ir --stage llvm` shows) and into a loaded object with the step's entry point (`load`). The runtime
allocates the buffers the schedule's plan names and calls the entry with their pointers (see
codegen/module.py for the table). The CPU backend is LLVM for a CPU target (the host's, or another
one's for a library), an in-process JIT and a cached object; another machine (a GPU through LLVM's
NVPTX target) plugs in beside it with the same two calls; and the stages above codegen stay as they are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from llvmlite import ir

from graphc.codegen.jit import Native, compile_cached, source_hash
from graphc.codegen.module import build_module
from graphc.codegen.target import Target, host_target
from graphc.ir.serialize import dumps
from graphc.passes.pipeline import Schedule, print_schedule


@dataclass(frozen=True)
class Build:
    """How a step is compiled: threads it splits across, a per-kernel cycle count, checked accesses."""

    threads: int = 1
    profile: bool = False
    check_bounds: bool = False


class Backend(Protocol):
    target: Target

    def module(self, sched: Schedule, entry: str, build: Build) -> ir.Module: ...
    def load(self, sched: Schedule, entry: str, build: Build, use_cache: bool = True) -> tuple[Native, bool]: ...


class CpuBackend:
    """LLVM for a CPU target, JIT-loaded in this process; objects cached by content."""

    def __init__(self, target: Target | None = None) -> None:
        self.target = target or host_target()

    def module(self, sched: Schedule, entry: str, build: Build) -> ir.Module:
        return build_module(sched, self.target, entry, build.threads, build.profile, build.check_bounds)

    def load(self, sched: Schedule, entry: str, build: Build, use_cache: bool = True) -> tuple[Native, bool]:
        """The native code of `sched`, loaded, and whether it came from the cache."""
        key = hashlib.sha256("\n".join([source_hash(), self.target.key(), entry, repr(build), dumps(sched.graph),
                                        print_schedule(sched)]).encode()).hexdigest()
        return compile_cached(key, lambda: self.module(sched, entry, build), self.target, use_cache)
