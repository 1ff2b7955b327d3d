"""Native code from LLVM modules: optimize, emit an object, cache it on disk, load it in-process.

The cache (graphc.codegen.cache) is keyed by a content hash the caller computes before any LLVM IR
exists, so a warm compile skips IR generation, optimization and code generation.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Callable

import llvmlite.binding as llvm
from llvmlite import ir

from graphc.about import PACKAGE_DIR, __version__

from graphc.codegen import cache
from graphc.codegen.target import Target, host_target


@functools.cache
def source_hash() -> str:
    """A hash of graphc's own code, part of every cache key: a cached object never outlives a
    change to the compiler that made it."""
    h = hashlib.sha256(__version__.encode())
    for f in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def link(modules: list[ir.Module]) -> llvm.ModuleRef:
    """One module holding all of `modules` (their external definitions must not clash; internal
    ones that do are renamed)."""
    mod = llvm.parse_assembly(str(modules[0]))
    for m in modules[1:]:
        mod.link_in(llvm.parse_assembly(str(m)))
    return mod


def optimize(module: ir.Module | llvm.ModuleRef, target: Target) -> llvm.ModuleRef:
    mod = module if isinstance(module, llvm.ModuleRef) else llvm.parse_assembly(str(module))
    mod.verify()
    tm = target.target_machine()
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod


class Native:
    """A loaded object: keeps its execution engine alive and resolves entry points."""

    def __init__(self, obj: bytes, target: Target) -> None:
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target.target_machine())
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name)
        if not addr:
            raise RuntimeError(f"entry point {name} not found in compiled object")
        return addr


def emit(module: ir.Module | llvm.ModuleRef, target: Target, shared: bool = False) -> bytes:
    """The optimized native object of `module`. `shared`: for linking into a shared library:
    position-independent, with its external definitions hidden (the objects linked with it call
    them; the library's exports are its C glue's to choose)."""
    mod = optimize(module, target)
    if shared:
        for f in mod.functions:
            if not f.is_declaration and f.linkage == llvm.Linkage.external:
                f.visibility = "hidden"
    return target.target_machine(reloc="pic" if shared else "default").emit_object(mod)


def compile_host(name: str, build: Callable[[Target], ir.Module]) -> Native:
    """The host's object for a module that depends only on graphc's own code (the worker pool, the
    batch feed), from the cache or built once."""
    target = host_target()
    key = hashlib.sha256(f"{source_hash()}|{target.key()}|{name}".encode()).hexdigest()
    return compile_cached(key, lambda: build(target), target)[0]


def compile_cached(key: str, build: Callable[[], ir.Module], target: Target,
                   use_cache: bool = True) -> tuple[Native, bool]:
    """Load the object for `key` from the cache, or build, optimize and emit it. Returns (native, hit)."""
    obj = cache.load(key) if use_cache else None
    hit = obj is not None
    if obj is None:
        obj = emit(build(), target)
        if use_cache:
            cache.store(key, obj)
    return Native(obj, target), hit
