"""The compilation target: host CPU name, features, vector width, and LLVM target machine."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import llvmlite.binding as llvm

# llvm.initialize() raises in llvmlite 0.50; these are still required. Every target is initialized,
# not just the host's, so code for another architecture can be emitted (and checked) here.
llvm.initialize_all_targets()
llvm.initialize_all_asmprinters()

_ELEMENT_BITS = {"f32": 32, "f64": 64}


@dataclass(frozen=True)
class FpControl:
    """A thread's floating-point control register: the LLVM intrinsics that read and write it, its
    width, whether they pass it through memory, and its flush-to-zero bits."""

    get: str
    set: str
    bits: int
    width: int
    via_memory: bool


@dataclass(frozen=True)
class Platform:
    """What generated code needs to know of an architecture beyond LLVM's target: the Linux system
    call numbers the worker pool uses, the floating-point control register, a spin-wait hint."""

    futex: int
    sched_yield: int
    fp_control: FpControl | None
    pause: str | None


PLATFORMS = {
    # MXCSR: flush-to-zero and denormals-are-zero
    "x86_64": Platform(202, 24, FpControl("llvm.x86.sse.stmxcsr", "llvm.x86.sse.ldmxcsr", 0x8040, 32, True),
                       "llvm.x86.sse2.pause"),
    # FPCR: FZ (bit 24)
    "aarch64": Platform(98, 124, FpControl("llvm.aarch64.get.fpcr", "llvm.aarch64.set.fpcr", 1 << 24, 64, False),
                        None),
}


@dataclass(frozen=True)
class Tuning:
    """The choices generated code makes for one kind of CPU, in one table. Why each value is what
    it is, with the measurements, is in docs/perf.md."""

    registers: int                      # vector registers
    tile: dict[str, tuple[int, int]]    # per dtype, the default GEMM register tile: rows × vectors
    dot_budget: int                     # registers the dot-product kernel's tile and row loads may use
    mc: int = 128                       # GEMM cache blocks: MC×KC of A in L2, KC×NR of B in L1,
    kc: int = 256                       # NC columns of B per pass (MC, NC: bounds, rounded down to
    nc: int = 1024                      # whole tiles; KC a multiple of 16)
    direct_m: int = 16                  # rows of C up to which a plain B is read in place, not packed
    dot_max_c: int = 64 * 64            # elements of C up to which a long-K A·Bᵀ takes the dot kernel
    dot_block_bytes: int = 1 << 19      # rows of A and B the dot kernel sweeps per K block
    parallel_macs: int = 1 << 18        # multiply-adds from which a GEMM splits across threads
    parallel_iterations: int = 1 << 14  # iterations from which a loop kernel splits across threads
    partial_max: int = 1 << 16          # elements of C up to which a GEMM may split K
    spins: int = 20000                  # polls before an idle pool worker sleeps on the futex
    yield_after: int = 256              # polls before each further poll also yields the core
    prefetch_rows: int = 4              # rows the batch feed prefetches ahead


_WIDE = Tuning(registers=32, tile={"f32": (8, 2), "f64": (8, 2)}, dot_budget=28)  # AVX-512
_NARROW = Tuning(registers=16, tile={"f32": (4, 2), "f64": (4, 2)}, dot_budget=14)  # AVX2, SSE2, NEON
# by CPU name, where one differs from its vector width's default
TUNINGS = {"znver4": replace(_WIDE, tile={"f32": (16, 1), "f64": (8, 2)})}  # one 512-bit FMA pipe


@dataclass(frozen=True)
class Target:
    triple: str
    cpu: str
    features: str
    vector_bits: int  # 512 with avx512f, 256 with avx/avx2, else 128

    def lanes(self, dtype: str) -> int:
        """Elements of `dtype` ("f32" or "f64") in one native vector register."""
        return self.vector_bits // _ELEMENT_BITS[dtype]

    @property
    def platform(self) -> Platform:
        arch = self.triple.split("-")[0]
        if arch not in PLATFORMS:
            raise ValueError(f"graphc generates code for {', '.join(PLATFORMS)}, not {arch} ({self.triple})")
        return PLATFORMS[arch]

    @property
    def tuning(self) -> Tuning:
        return TUNINGS.get(self.cpu) or (_WIDE if self.vector_bits == 512 else _NARROW)

    @property
    def llvm_features(self) -> str:
        """The features LLVM generates code with: the CPU's, and with 512-bit vectors, loops
        vectorized at that width too (LLVM's tuning for Intel cores prefers 256-bit loops; the
        GEMMs use 512 bits anyway, and loop kernels measured faster at 512: docs/perf.md)."""
        wide = self.vector_bits == 512 and self.triple.startswith("x86_64")
        return ",".join(f for f in (self.features, "-prefer-256-bit" if wide else "") if f)

    def key(self) -> str:
        """A string identifying generated code's target, for cache keys."""
        return f"{self.triple}|{self.cpu}|{self.llvm_features}"

    def target_machine(self, reloc: str = "default") -> llvm.TargetMachine:
        # llvmlite's default code model ("jitdefault", large on x86-64) is kept: with the small
        # one MCJIT aborts on 32-bit relocations to globals placed beyond 2 GiB.
        return llvm.Target.from_triple(self.triple).create_target_machine(
            cpu=self.cpu, features=self.llvm_features, opt=3, reloc=reloc
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
