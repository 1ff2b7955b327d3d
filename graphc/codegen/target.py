"""The compilation target: host CPU name, features, vector width, and LLVM target machine."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import llvmlite.binding as llvm

# llvm.initialize() raises in llvmlite 0.50; these two are still required for the host backend.
llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

_ELEMENT_BITS = {"f32": 32, "f64": 64}


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str
    vector_bits: int  # 512 with avx512f, 256 with avx/avx2, else 128

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` ("f32" or "f64") in one native vector register."""
        return self.vector_bits // _ELEMENT_BITS[dtype]

    def key(self) -> str:
        """A string identifying generated code's target, for cache keys."""
        return f"{self.triple}|{self.cpu}|{self.features}"

    def target_machine(self, reloc: str = "default") -> llvm.TargetMachine:
        # llvmlite's default code model ("jitdefault", large on x86-64) is kept: with the small
        # one MCJIT aborts on 32-bit relocations to globals placed beyond 2 GiB.
        return llvm.Target.from_triple(self.triple).create_target_machine(
            cpu=self.cpu, features=self.features, opt=3, reloc=reloc
        )


@functools.cache
def host_target() -> Target:
    """The CPU this process runs on, with every feature it reports."""
    features = llvm.get_host_cpu_features().flatten()
    enabled = set(f[1:] for f in features.split(",") if f.startswith("+"))
    if "avx512f" in enabled:
        bits = 512
    elif "avx" in enabled or "avx2" in enabled:
        bits = 256
    else:
        bits = 128
    return Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), features, bits)
